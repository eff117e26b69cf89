"""The one place that maps domain errors to HTTP statuses. Bodies: {"detail": "<what to do>"}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from app.deps import Unauthorized
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge

STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 422, TooLarge: 413, Forbidden: 403, Unauthorized: 401}


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status in STATUS.items():
        def handler(_request: Request, exc: Exception, status=status) -> JSONResponse:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)
        app.add_exception_handler(exc_type, handler)

    # Two requests that create the same thing at once: the database's unique constraint decides, and the
    # loser gets what a sequential request would have got, a conflict to retry or inspect.
    def integrity(_request: Request, _exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"detail": "a concurrent request changed the same resource (for example created "
                                       "the same name); look it up or retry"}, status_code=409)
    app.add_exception_handler(IntegrityError, integrity)

    # A model built from request values inside a route (not by FastAPI's own parsing) that rejects them.
    def invalid(_request: Request, exc: ValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": problems}, status_code=422)
    app.add_exception_handler(ValidationError, invalid)

    # FastAPI's own request validation, without echoing the input back: the input may hold NaN, which no
    # JSON response can carry (the 422 would become a 500), and echoing uploads or secrets is no help.
    def request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)
    app.add_exception_handler(RequestValidationError, request_invalid)
