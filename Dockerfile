# One image for the API and the workers. The API process never imports torch; workers need the GPU build.
FROM python:3.11-slim
WORKDIR /srv/lorifold
COPY pyproject.toml README.md ./
COPY app app
COPY cli cli
COPY registry registry
COPY jobs jobs
COPY adapterio adapterio
COPY training training
COPY merging merging
COPY evaluation evaluation
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV LORIFOLD_DATA_DIR=/data LORIFOLD_BLOB_ROOT=/data/blobs
ENTRYPOINT ["lorifold"]
