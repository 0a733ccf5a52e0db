# GPU image: CUDA runtime + the bot. Build: docker build -t img2img-bot .
# Run:   docker run --gpus all --env-file .env -v hf-cache:/cache -v bot-data:/data img2img-bot
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    DATA_DIR=/data \
    DEVICE=cuda

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 bot \
    && mkdir -p /app /cache /data \
    && chown -R bot:bot /app /cache /data

WORKDIR /app
RUN python3.11 -m venv /opt/venv && chown -R bot:bot /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY --chown=bot:bot pyproject.toml README.md ./
COPY --chown=bot:bot bot ./bot
COPY --chown=bot:bot pipeline ./pipeline
COPY --chown=bot:bot config ./config
# torch from PyPI is the CUDA build on Linux x86_64.
RUN pip install --upgrade pip && pip install .

USER bot
VOLUME ["/cache", "/data"]
CMD ["python", "-m", "bot"]
