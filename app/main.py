"""The FastAPI application. `create_app(settings)` is what `serve` and the tests run."""
from __future__ import annotations

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.routes import adapters, base_models, datasets, health, jobs, keys, merges, uploads
from app.services import Services
from registry.settings import Settings, get_settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    services = services or Services.from_settings(settings or get_settings())
    app = FastAPI(title="lorifold", version="0.1.0",
                  description="Registry, trainer and merger for LoRA / LoRI adapters.")
    app.state.services = services
    install_error_handlers(app)
    # merges first: /v1/adapters/interference must win over /v1/adapters/{name}
    for module in (health, keys, base_models, merges, adapters, uploads, datasets, jobs):
        app.include_router(module.router)
    return app
