# gameart-serve: TorchServe 0.12.0 with this project's handler, GPU-ready (CPU hosts run it too).
#
#   docker build -t gameart-serve .
#   docker run --gpus all -p 127.0.0.1:8080:8080 -v "$PWD/model_store:/app/model_store" gameart-serve
#
# Ports: 8080 inference (the only one published; put nginx in front, see deploy/nginx.conf).
# Management (8081) and metrics (8082) listen on the container's loopback only: reach them with
# `docker exec <container> python scripts/serve.py status` or `... scale.py`.
# Token authorisation is on: `docker exec <container> python scripts/serve.py token inference`.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Java 17 for TorchServe's frontend; Python 3.12 from Ubuntu 24.04 (versions pinned to their
# series: patch releases keep coming through the distribution's security updates).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "ca-certificates=20240203*" "openjdk-17-jre-headless=17.0.*" \
        "python3=3.12.*" "python3-venv=3.12.*" \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin serve
WORKDIR /app

# The same pinned install as `make install` (requirements.txt + constraints.txt), without the
# test tools; dependency layers first so code changes do not reinstall them.
COPY requirements.txt constraints.txt ./
RUN python3 -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY pyproject.toml README.md config.properties log4j2.xml metrics.yaml ./
COPY modelspec/ modelspec/
COPY export/ export/
COPY handler/ handler/
COPY gameart/ gameart/
COPY scripts/ scripts/
RUN /app/.venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && /app/.venv/bin/python scripts/check_install.py \
    && mkdir -p /app/model_store /app/.run \
    && chown -R serve:serve /app/model_store /app/.run

USER 10001:10001
ENV PATH="/app/.venv/bin:${PATH}" \
    JAVA_HOME="/usr/lib/jvm/java-17-openjdk-amd64" \
    PYTHONUNBUFFERED=1
VOLUME ["/app/model_store"]
EXPOSE 8080

# Ready means every model in the store has READY workers (management API), not just /ping.
HEALTHCHECK --interval=30s --timeout=15s --start-period=300s --retries=3 \
    CMD ["/app/.venv/bin/python", "scripts/serve.py", "health"]

# The project's config.properties, with only the inference API opened to the container network.
CMD ["/app/.venv/bin/python", "scripts/serve.py", "start", "--foreground", \
     "--set", "inference_address=http://0.0.0.0:8080"]
