"""Turn a parsed adapter/dataset upload form into staged files and typed fields."""
from __future__ import annotations

import json

from app.multipart_stream import ParsedForm
from app.services import Services
from registry import uploads
from registry.archive import check_member_filename, extract_archive
from registry.blobstore import StagedFile
from registry.errors import InvalidInput

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def required_field(form: ParsedForm, name: str) -> str:
    value = form.field(name)
    if not value:
        raise InvalidInput(f"form field {name!r} is required")
    return value


def parse_tags(form: ParsedForm) -> list[str]:
    raw = form.fields.get("tags", [])
    if len(raw) == 1 and raw[0].startswith("["):
        try:
            tags = json.loads(raw[0])
        except json.JSONDecodeError:
            raise InvalidInput("tags must be a JSON list of strings or comma-separated") from None
    else:
        tags = [t.strip() for value in raw for t in value.split(",") if t.strip()]
    return tags


def parse_metadata(form: ParsedForm) -> dict:
    raw = form.field("metadata")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise InvalidInput("metadata must be a JSON object")
    return meta


def upload_ids(form: ParsedForm) -> list[str]:
    return [u.strip() for value in form.fields.get("upload_ids", []) for u in value.split(",") if u.strip()]


def stage_adapter_files(form: ParsedForm, services: Services, project: str) -> dict[str, StagedFile]:
    """Exactly one source: `files` parts, one `archive` part, or `upload_ids` of completed uploads.
    Consumes the form's staged files (each ends up in the result or discarded)."""
    settings = services.settings
    files, archives, ids = form.files.get("files", []), form.files.get("archive", []), upload_ids(form)
    if sum(bool(x) for x in (files, archives, ids)) != 1 or len(archives) > 1:
        form.discard()
        raise InvalidInput("send the adapter as `files` (adapter_config.json, adapter_model.safetensors, optional "
                           "lori_masks.safetensors), as one `archive` (.tar/.tar.gz/.zip), or as `upload_ids`")
    try:
        if archives:
            filename, staged = archives[0]
            if not filename.lower().endswith(ARCHIVE_SUFFIXES):
                raise InvalidInput(f"archive {filename!r} must be .tar, .tar.gz, .tgz or .zip")
            return extract_archive(staged.path, services.store, max_bytes=settings.max_upload_bytes,
                                   max_members=settings.max_archive_members)
        if ids:
            with services.session_factory() as session:
                staged_uploads = uploads.stage_completed(session, services.store, project=project, upload_ids=ids)
            try:
                for name in staged_uploads:
                    check_member_filename(name)
            except BaseException:
                for s in staged_uploads.values():
                    s.discard()
                raise
            return staged_uploads
        result: dict[str, StagedFile] = {}
        for filename, staged in files:
            check_member_filename(filename)
            if filename in result:
                raise InvalidInput(f"{filename!r} was sent twice")
            result[filename] = staged
        return result
    except BaseException:
        form.discard()
        raise
    finally:
        for _, staged in archives:
            staged.discard()
