"""What one API process holds: settings, the engine, the session factory and the blob store."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.blobstore import LocalBlobStore
from registry.db import make_engine, make_session_factory
from registry.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: LocalBlobStore

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        engine = make_engine(settings.resolved_database_url())
        return cls(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                   store=LocalBlobStore(settings.resolved_blob_root()))
