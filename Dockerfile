# One image for every role of a FedGMA deployment: SuperLink (+ ServerApp), SuperNode
# (+ ClientApp) and the one-shot `control` service that registers SuperNodes and submits a run.
FROM python:3.11-slim

# 1: install the project with its dependencies (torch, torchvision, flwr: a few GB).
# 0: copy the code only (the tests mount a ready virtualenv at /venv instead).
ARG INSTALL_DEPENDENCIES=1

ENV PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FEDGMA_DATA_DIR=/data \
    PATH=/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedgma ./fedgma
RUN if [ "$INSTALL_DEPENDENCIES" = 1 ]; then pip install --no-cache-dir .; fi \
    && mkdir -p /data /app/outputs
