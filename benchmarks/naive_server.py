"""The baseline of benchmarks/registry_io.py: the endpoints a team would write first with FastAPI.

    uvicorn benchmarks.naive_server:app --port 8001
"""
import hashlib
import os
import tempfile

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import FileResponse

app = FastAPI()
ROOT = os.environ.get("NAIVE_ROOT", tempfile.gettempdir())


@app.post("/upload")
async def upload(file: UploadFile, fsync: bool = False):
    """fsync=true: the same, made durable like lorifold's store (for a like-for-like row)."""
    h = hashlib.sha256()
    with open(os.path.join(ROOT, "naive-upload"), "wb") as out:
        while chunk := await file.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    return {"sha256": h.hexdigest()}


@app.put("/raw")
async def raw(request: Request):
    h = hashlib.sha256()
    with open(os.path.join(ROOT, "naive-raw"), "wb") as out:
        async for chunk in request.stream():
            h.update(chunk)
            out.write(chunk)
    return {"sha256": h.hexdigest()}


@app.get("/download")
def download():
    return FileResponse(os.path.join(ROOT, "naive-source"))
