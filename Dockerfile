# gameart-serve: TorchServe 0.12.0 with this project's handler. One Dockerfile, two bases:
#
#   GPU hosts (the default base, CUDA runtime):
#     docker build -t gameart-serve .
#     docker run --gpus all --stop-timeout 30 -p 127.0.0.1:8080:8080 \
#         -v "$PWD/model_store:/app/model_store:ro" gameart-serve
#   CPU hosts, or a plain Debian/Ubuntu base (what the tests build, with podman):
#     docker build --build-arg BASE_IMAGE=debian:bookworm -t gameart-serve:cpu .
#     (or `make image`, which builds that base with debootstrap where no registry is reachable)
#
# Ports: 8080 inference (the only one published; put nginx in front, see deploy/nginx.conf).
# Management (8081) and metrics (8082) listen on the container's loopback only: reach them with
# `docker exec <container> python scripts/serve.py status` or `... scale.py`.
# Token authorisation is on: `docker exec <container> python scripts/serve.py token inference`.
# Keys are renewed inside the container before they expire (gameart/ops/keys.py).
#
# Stopping: tini (PID 1) forwards SIGTERM to the supervisor (scripts/serve.py start --foreground),
# which reports "draining" to the health check, lets accepted requests finish, then stops
# TorchServe, all within --grace seconds. Move new traffic away first (a load balancer reading
# the health check, Kubernetes' preStop pause). Keep the runtime's grace (docker/podman
# --stop-timeout, Kubernetes terminationGracePeriodSeconds) at least as long: 10 s is Docker's
# default.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Java 17 for TorchServe's frontend, the distribution's Python 3, tini as PID 1, iproute2's `ss`
# (the supervisor counts in-flight requests with it). Versions follow the base's release: its tag
# fixes the series, and patch releases are the distribution's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates openjdk-17-jre-headless python3 python3-venv tini iproute2 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin serve
WORKDIR /app

# The same pinned install as `make install` (requirements.txt + constraints.txt), without the
# test tools; dependency layers first so a code change rebuilds in seconds. pip trusts the
# system's CA store, where a proxy's CA is installed on hosts that re-sign HTTPS.
COPY requirements.txt constraints.txt ./
RUN python3 -m venv /app/.venv \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /app/.venv/bin/pip install \
        --no-cache-dir --disable-pip-version-check -r requirements.txt -c constraints.txt

COPY pyproject.toml README.md config.properties log4j2.xml metrics.yaml ./
COPY modelspec/ modelspec/
COPY export/ export/
COPY handler/ handler/
COPY gameart/ gameart/
COPY scripts/ scripts/
RUN /app/.venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && /app/.venv/bin/python scripts/check_install.py \
    && /app/.venv/bin/python -m compileall -q modelspec export handler gameart scripts \
    && mkdir -p /app/model_store /app/.run \
    && chown -R serve:serve /app/model_store /app/.run

USER 10001:10001
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The run directory (logs, key file, TorchServe's temp files) is the only place written to, so
# the root filesystem can be mounted read-only (docker run --read-only).
VOLUME ["/app/model_store", "/app/.run"]
EXPOSE 8080
STOPSIGNAL SIGTERM

# Ready means every model in the store has READY workers (management API), not just /ping.
HEALTHCHECK --interval=30s --timeout=15s --start-period=300s --retries=3 \
    CMD ["/app/.venv/bin/python", "scripts/serve.py", "health"]

ENTRYPOINT ["/usr/bin/tini", "--"]
# The project's config.properties, with only the inference API opened to the container network.
CMD ["/app/.venv/bin/python", "scripts/serve.py", "start", "--foreground", \
     "--set", "inference_address=http://0.0.0.0:8080"]
