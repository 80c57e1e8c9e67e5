"""One Settings object, read once from the environment (prefix MEDSEG_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSEG_", extra="ignore")

    environment: str = "development"  # development | production
    state_dir: Path = REPO_ROOT / ".medseg"
    services_dir: Path = REPO_ROOT / "services"
    model_store_dir: Path = REPO_ROOT / "model-store"

    database_url: str = ""  # empty: SQLite file under state_dir

    # Object store (S3 API through the minio SDK). Empty credentials: read the ones generated under state_dir.
    s3_endpoint: str = "127.0.0.1:8333"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    bucket_datasets: str = "medseg-datasets"
    bucket_results: str = "medseg-results"
    bucket_models: str = "medseg-models"
    bucket_runs: str = "medseg-runs"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 50051

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'medseg.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
