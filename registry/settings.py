"""The one settings class, read once from LORIFOLD_* environment variables (or a .env file).

It lives in registry/ because the API process and the worker both need it and neither may import
the other.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORIFOLD_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""  # default: sqlite file under data_dir
    blob_root: Path | None = None  # default: data_dir / "blobs"
    admin_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 16 * 1024**3
    max_dataset_bytes: int = 2 * 1024**3
    max_archive_members: int = 16
    upload_session_ttl_s: int = 24 * 3600
    in_process_worker: bool = True  # `serve` runs one worker thread beside the API
    worker_gpus: str | None = None  # e.g. "0,1"; sets CUDA_VISIBLE_DEVICES for job children
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    max_attempts: int = 3
    poll_interval_s: float = 1.0

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lorifold.db').resolve()}"

    def resolved_blob_root(self) -> Path:
        return (self.blob_root or self.data_dir / "blobs").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
