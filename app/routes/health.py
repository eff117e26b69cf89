from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import ServicesDep
from registry.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    """The database answers and its schema is at the migrations' head."""
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current, head = current_revision(services.engine), head_revision()
    except Exception as e:  # any failure to reach the database means not ready
        return JSONResponse({"status": "unavailable", "detail": f"database unreachable: {e}"}, status_code=503)
    if current != head:
        return JSONResponse({"status": "unavailable", "detail": f"schema at {current}, head is {head}; run "
                             "`lorifold migrate`"}, status_code=503)
    return JSONResponse({"status": "ready", "revision": current})
