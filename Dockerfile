# One image for every role of a FedGMA deployment: SuperLink (+ ServerApp), SuperNode
# (+ ClientApp) and the one-shot services that register SuperNodes and submit a run.
FROM python:3.11-slim

# 1: install the project with the deploy extra (the app: torch, torchvision; flwr 1.39, whose
#    SuperNodes speak gRPC: a few GB).
# 0: copy the code only (the tests mount a ready virtualenv at /venv instead).
ARG INSTALL_DEPENDENCIES=1
# The user every process runs as: Flower's own images use app, 49999:49999, so key files
# prepared for those (`chown 49999:49999`) work here too.
ARG APP_UID=49999

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_HOME=/tmp/flwr \
    FEDGMA_DATA_DIR=/data \
    FEDGMA_OUTPUT_ROOT=/app/outputs \
    PATH=/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY fedgma ./fedgma
RUN if [ "$INSTALL_DEPENDENCIES" = 1 ]; then pip install --no-cache-dir ".[deploy]"; fi \
    && groupadd --gid "$APP_UID" app \
    && useradd --uid "$APP_UID" --gid app --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app \
    && mkdir -p /data /app/outputs /state \
    && chown app:app /data /app/outputs /state

# The root filesystem can be mounted read-only: Flower writes under FLWR_HOME (/tmp, a tmpfs
# in compose), the app under /data (data sets), /app/outputs (results) and /state (SuperLink).
USER app
