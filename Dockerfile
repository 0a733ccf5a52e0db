# One image for the bot and the GPU workers (compose.yaml runs both).
# Build: docker build -t img2img-bot .
# Bot:    docker run --env-file .env -v hf-cache:/cache -v bot-data:/data img2img-bot
# Worker: docker run --gpus all --env-file .env -v hf-cache:/cache img2img-bot \
#             python -m pipeline worker --redis redis://valkey:6379/0
#
# No CUDA base image: PyPI's Linux x86_64 torch wheels bring their own CUDA and cuDNN
# libraries (the nvidia-* wheels), so they need only glibc and the host's NVIDIA driver
# (through the NVIDIA container toolkit). A CUDA runtime image would add a second copy.
FROM python:3.11-slim-bookworm

# The same pin as the Makefile's TORCH_PIN (a CUDA build when installed from PyPI).
ARG TORCH_PIN=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    DATA_DIR=/data \
    DEVICE=auto \
    METRICS_PORT=9100 \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 bot \
    && mkdir -p /app /cache /data \
    && chown -R bot:bot /app /cache /data \
    && python -m venv /opt/venv

WORKDIR /app

# Dependencies first, in their own layers: a source change does not reinstall torch.
# torch (with its CUDA libraries) apart, then exactly the runtime lock, hashes checked
# (tools/lock.py sync; the dev/test lock stays out of the image).
RUN pip install "$TORCH_PIN"
COPY pyproject.toml ./
COPY requirements/runtime.lock ./requirements/
COPY tools/lock.py ./tools/
RUN python tools/lock.py sync requirements/runtime.lock

COPY --chown=bot:bot README.md ./
COPY --chown=bot:bot config ./config
COPY --chown=bot:bot pipeline ./pipeline
COPY --chown=bot:bot bot ./bot
RUN pip install --no-deps . && python tools/lock.py check requirements/runtime.lock

USER bot
VOLUME ["/cache", "/data"]
EXPOSE 9100
# /healthz on METRICS_PORT: the bot (gateway, dispatch loop, database, workers online) or a
# worker (model loaded); 503 makes the container unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9100'), timeout=8)"
CMD ["python", "-m", "bot"]
