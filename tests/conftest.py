"""Shared fixtures. Database tests run twice: on a fresh SQLite file and on a PostgreSQL database that
this test run creates (and drops) for itself on the local server, so runs never see each other."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests import factories

# Database imports live inside the fixtures: the GPU machine runs tests/training and tests/merging
# with torch alone, without the service's dependencies.

PG_ADMIN_URL = os.environ.get("LORIFOLD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="session")
def pg_url():
    from sqlalchemy import create_engine, text

    from registry import migrate

    name = f"lorifold_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    from registry import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _truncate_all(url: str) -> None:
    from sqlalchemy import text

    from registry.db import make_engine
    from registry.models import Base

    engine = make_engine(url, pooled=False)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "lorifold.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_url")
        yield url
        _truncate_all(url)


@pytest.fixture
def settings(db_url, tmp_path):
    from registry.settings import Settings

    return Settings(database_url=db_url, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, in_process_worker=False,
                    _env_file=None)


@pytest.fixture
def services(settings):
    from app.services import Services

    services = Services.from_settings(settings)
    yield services
    services.engine.dispose()


@pytest.fixture
def client(services):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(services=services)) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield c


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return factories.save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def peft_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return factories.save_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "peft-r4")


@pytest.fixture
def base_model(client, tiny_model_dir) -> str:
    r = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)})
    assert r.status_code == 201, r.text
    return "tiny"
