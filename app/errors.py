"""The one place that maps domain errors to HTTP statuses. Bodies: {"detail": "<what to do>"}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.deps import Unauthorized
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge

STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 422, TooLarge: 413, Forbidden: 403, Unauthorized: 401}


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status in STATUS.items():
        def handler(_request: Request, exc: Exception, status=status) -> JSONResponse:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)
        app.add_exception_handler(exc_type, handler)
