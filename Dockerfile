# TransferLab on a GPU host:
#   docker build -t transferlab .
#   docker run --gpus all -p 8501:8501 -e TL_PASSWORD=<password> -v <data>:/data:ro -v <state>:/state transferlab
# The pinned torch/torchvision pair in requirements.txt is the CUDA build on Linux x86_64.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TL_STATE=/state TL_HOST=0.0.0.0 TL_PORT=8501

RUN useradd --create-home --uid 1000 transferlab \
 && mkdir -p /state /data && chown transferlab:transferlab /state

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt && pip install --no-deps animal-mnist==0.4
COPY --chown=transferlab:transferlab . .

USER transferlab
VOLUME ["/state"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"
ENTRYPOINT ["/app/docker/entrypoint.sh"]
