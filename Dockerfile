# sentistream worker: consumes Kafka, scores sentiment on CPU, publishes events.
# Build: docker build -t sentistream .   Run: docker compose up (see docker-compose.yml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models-cache \
    SENTISTREAM_DATA_DIR=/data

# CPU-only torch first, from the PyTorch CPU index: the default PyPI wheel pulls in gigabytes of
# CUDA libraries that a CPU worker never loads. Its own layer, so code changes do not rebuild it.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# The project itself. pip sees the torch already installed and keeps it.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY connectors ./connectors
COPY models ./models
RUN pip install . && rm -rf /src

# Non-root. The model cache and the data dir exist in the image, owned by the worker, so named
# volumes mounted there start with the right owner.
RUN useradd --create-home --uid 10001 --user-group sentistream \
    && mkdir -p /models-cache /data /app \
    && chown sentistream:sentistream /models-cache /data /app
WORKDIR /app
USER sentistream

# Faust web server: /metrics and the worker's views (SENTISTREAM_WEB_PORT).
EXPOSE 6066

ENTRYPOINT ["sentistream"]
CMD ["worker"]
