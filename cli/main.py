"""`lorifold` command line: serve, worker, migrate, keys. The composition root: the only module that
wires the API (app) and the worker (jobs) together."""
from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Annotated, Optional

import typer
from rich.console import Console

from registry.settings import Settings, get_settings

cli = typer.Typer(help="lorifold: a registry, trainer and merger for LoRA / LoRI adapters.", no_args_is_help=True)
keys_cli = typer.Typer(help="Create, list and revoke API keys (directly in the database).", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
console = Console(stderr=True, soft_wrap=True)  # soft wrap: keys and URLs stay copyable


def _admin_key(settings: Settings) -> str:
    """LORIFOLD_ADMIN_KEY, or one generated once and kept in <data_dir>/admin.key (mode 600)."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.data_dir / "admin.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _worker_context(settings: Settings):
    from jobs.handlers.base import WorkerContext
    from registry.blobstore import LocalBlobStore
    from registry.db import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url())
    return WorkerContext(settings=settings, session_factory=make_session_factory(engine),
                         store=LocalBlobStore(settings.resolved_blob_root()))


@cli.command()
def migrate(revision: str = "head", downgrade: Annotated[bool, typer.Option(help="downgrade to REVISION")] = False):
    """Bring the database schema to REVISION (Alembic)."""
    from registry import migrate as m

    url = get_settings().resolved_database_url()
    (m.downgrade if downgrade else m.upgrade)(url, revision)
    console.print(f"[green]schema at {revision}[/green] ({url.split('@')[-1]})")


@cli.command()
def serve(host: Optional[str] = None, port: Optional[int] = None,
          worker: Annotated[bool, typer.Option(help="run one job worker inside this process")] = True):
    """Migrate, then serve the HTTP API (and, by default, one in-process worker)."""
    import uvicorn

    from app.main import create_app
    from jobs.worker import Worker
    from registry import migrate as m

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    settings.admin_key = _admin_key(settings)
    m.upgrade(settings.resolved_database_url())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # /readyz checks the revision on every call
    host, port = host or settings.host, port or settings.port
    stop = threading.Event()
    if worker and settings.in_process_worker:
        threading.Thread(target=Worker(_worker_context(settings)).run, args=(stop,), daemon=True,
                         name="lorifold-worker").start()
    console.print(f"lorifold listening on [bold]http://{host}:{port}[/bold]  (docs: http://{host}:{port}/docs)")
    console.print(f"database: {settings.resolved_database_url()}   blobs: {settings.resolved_blob_root()}")
    console.print(f"authenticate with:  -H 'Authorization: Bearer {settings.admin_key}'"
                  + ("" if os.environ.get("LORIFOLD_ADMIN_KEY") else f"   (kept in {settings.data_dir / 'admin.key'})"))
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        stop.set()


@cli.command()
def worker(gpus: Annotated[Optional[str], typer.Option(help="GPU ids for this worker's jobs, e.g. 0 or 0,1")] = None,
           once: Annotated[bool, typer.Option(help="run at most one job, then exit")] = False):
    """Claim and run jobs until stopped (one worker per GPU)."""
    from jobs.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    w = Worker(_worker_context(get_settings()), gpus=gpus)
    if once:
        w.run_once()
        return
    stop = threading.Event()
    try:
        w.run(stop)
    except KeyboardInterrupt:
        stop.set()


@keys_cli.command("create")
def keys_create(name: str, project: str = "default",
                scopes: Annotated[str, typer.Option(help="comma-separated: read, write, admin")] = "read,write"):
    """Print a new API key (shown once)."""
    from registry import apikeys
    from registry.db import make_engine, make_session_factory

    factory = make_session_factory(make_engine(get_settings().resolved_database_url()))
    with factory() as session:
        row, key = apikeys.create_key(session, project=project, name=name, scopes=scopes.split(","))
        session.commit()
    console.print(f"created {row.prefix} for project {project} with scopes {row.scopes}")
    print(key)


@keys_cli.command("revoke")
def keys_revoke(prefix: str):
    from registry import apikeys
    from registry.db import make_engine, make_session_factory

    factory = make_session_factory(make_engine(get_settings().resolved_database_url()))
    with factory() as session:
        apikeys.revoke_key(session, prefix=prefix, project=None)
        session.commit()
    console.print(f"revoked {prefix}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
