"""create_app(settings): the FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from service.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(title="logitsearch", version="0.1.0",
                  description="Similarity search over logit embeddings")
    app.state.settings = settings

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
