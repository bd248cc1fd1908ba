# TransferLab on a GPU host:
#   docker build -t transferlab .
#   docker run --gpus all --shm-size=8g -p 8501:8501 -e TL_PASSWORD=<password> -v <data>:/data:ro -v <state>:/state transferlab
# The pinned torch/torchvision pair in requirements.txt is the CUDA build on Linux x86_64: torch 2.14.1
# is built with CUDA 13.0, which needs an NVIDIA driver 580 or newer on the host.
# --shm-size: the training runs' DataLoader workers hand their batches over through /dev/shm, of
# which Docker gives 64 MB (tl_core/data/shared_memory.py).
# BASE: the image this one builds on; docker/check-image.sh gives a Debian one made locally where no
# image registry can be reached.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TL_STATE=/state TL_HOST=0.0.0.0 TL_PORT=8501

# tini as PID 1: it hands `docker stop`'s SIGTERM to the service and reaps every orphaned process
# (a killed run's DataLoader workers) whatever the service is doing.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 transferlab \
 && mkdir -p /state /data && chown transferlab:transferlab /state

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt && pip install --no-deps animal-mnist==0.4
COPY --chown=transferlab:transferlab . .

USER transferlab
VOLUME ["/state"]
EXPOSE 8501
# The dashboard answers (serve, dashboard); a worker container's worker heartbeats (worker).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s CMD ["/app/docker/healthcheck.sh"]
ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
