from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.deps import Reader, ServicesDep, SessionDep, Writer
from app.file_responses import blob_response, not_modified, tar_response
from app.forms import parse_metadata, parse_tags, required_field, stage_adapter_files, upload_ids
from app.multipart_stream import parse_multipart
from app.schemas import AdapterList, AdapterPublic, AdapterVersionPublic, AliasUpdate, LineageEdgePublic, LineagePublic
from app.views import adapter_public, version_public
from registry import adapters, blobs, uploads
from registry.errors import NotFound
from registry.ingest import NewVersion, ingest_adapter

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AdapterVersionPublic)
async def upload(request: Request, principal: Writer, services: ServicesDep, response: Response):
    """multipart: name, base_model, tags, metadata (JSON) and `files` | one `archive` | `upload_ids`.
    The same bytes under the same name answer 200 with the existing version."""
    form = await parse_multipart(request, services.store, file_fields={"files", "archive"},
                                 max_bytes=services.settings.max_upload_bytes)
    try:
        new = NewVersion(project=principal.project, name=required_field(form, "name"),
                         base_model=required_field(form, "base_model"), tags=parse_tags(form),
                         meta=parse_metadata(form))
    except BaseException:
        form.discard()
        raise
    staged = await run_in_threadpool(stage_adapter_files, form, services, principal.project)
    version_id, created = await run_in_threadpool(ingest_adapter, services.session_factory, services.store, new, staged)
    with services.session_factory() as session:
        if ids := upload_ids(form):
            uploads.delete_uploads(session, services.store, project=principal.project, upload_ids=ids)
            session.commit()
        if not created:
            response.status_code = status.HTTP_200_OK
        return version_public(session, adapters.get_version_by_id(session, version_id=version_id))


@router.get("")
def list_adapters(principal: Reader, session: SessionDep, base_model: str | None = None, kind: str | None = None,
                  tag: str | None = None, prefix: str | None = None, cursor: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> AdapterList:
    rows, next_cursor = adapters.list_adapters(session, project=principal.project, base_model=base_model, kind=kind,
                                               tag=tag, prefix=prefix, cursor=cursor, limit=limit)
    return AdapterList(data=[adapter_public(session, a, with_versions=False) for a in rows], next_cursor=next_cursor)


@router.get("/{name}")
def get_adapter(name: str, principal: Reader, session: SessionDep) -> AdapterPublic:
    return adapter_public(session, adapters.get_adapter(session, project=principal.project, name=name),
                          with_versions=True)


@router.get("/{name}/versions/{ref}")
def get_version(name: str, ref: str, principal: Reader, session: SessionDep) -> AdapterVersionPublic:
    """ref: a version number, an alias, or 'latest'."""
    return version_public(session, adapters.resolve_version(session, project=principal.project, name=name, ref=ref))


@router.get("/{name}/versions/{ref}/archive")
def download_archive(name: str, ref: str, request: Request, principal: Reader, session: SessionDep,
                     services: ServicesDep) -> Response:
    """The PEFT folder as a tar stream; ETag is the manifest sha256."""
    version = adapters.resolve_version(session, project=principal.project, name=name, ref=ref)
    etag = f'"{version.manifest_sha256}"'
    if cached := not_modified(request, etag):
        return cached
    files = [(f.filename, f.size, services.store.local_path(f.sha256)) for f in version.files]
    return tar_response(f"{name}-v{version.version}", files, etag=etag)


@router.get("/{name}/versions/{ref}/files/{filename}")
def download_file(name: str, ref: str, filename: str, request: Request, principal: Reader, session: SessionDep,
                  services: ServicesDep) -> Response:
    """One raw file, with ETag (its sha256) and HTTP Range."""
    version = adapters.resolve_version(session, project=principal.project, name=name, ref=ref)
    match = next((f for f in version.files if f.filename == filename), None)
    if match is None:
        raise NotFound(f"version {version.version} of {name!r} has no file {filename!r}; it has "
                       f"{[f.filename for f in version.files]}")
    etag = f'"{match.sha256}"'
    if cached := not_modified(request, etag):
        return cached
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return blob_response(services.store.local_path(match.sha256), filename=filename, etag=etag, media_type=media)


@router.put("/{name}/aliases/{alias}")
def set_alias(name: str, alias: str, body: AliasUpdate, principal: Writer, session: SessionDep) -> AdapterVersionPublic:
    """Point an alias (e.g. `production`) at a version; the move is one atomic row update."""
    version = adapters.set_alias(session, project=principal.project, name=name, alias=alias, ref=body.version)
    return version_public(session, version)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(name: str, alias: str, principal: Writer, session: SessionDep) -> None:
    adapters.delete_alias(session, project=principal.project, name=name, alias=alias)


@router.delete("/{name}/versions/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(name: str, ref: str, principal: Writer, session: SessionDep, services: ServicesDep,
                   force: bool = False) -> None:
    """409 while other versions descend from it, unless force=true."""
    version = adapters.resolve_version(session, project=principal.project, name=name, ref=ref)
    freed = adapters.delete_version(session, version=version, force=force)
    session.commit()
    blobs.delete_unreferenced_files(services.session_factory, services.store, freed)


@router.get("/{name}/versions/{ref}/lineage")
def get_lineage(name: str, ref: str, principal: Reader, session: SessionDep) -> LineagePublic:
    version = adapters.resolve_version(session, project=principal.project, name=name, ref=ref)
    edges = adapters.lineage(session, version=version)

    def public(pairs):
        return [LineageEdgePublic(name=v.adapter.name, version=v.version, role=role) for v, role in pairs]
    return LineagePublic(name=name, version=version.version, parents=public(edges["parents"]),
                         children=public(edges["children"]))
