# syntax=docker/dockerfile:1
# One image for every Python service; docker-compose.yml and the Helm chart give each its
# command (`serve gateway`, `serve verifier`, `worker`, `migrate`, ...).
#
#   docker build -t rewardhub .                                      # CPU torch
#   docker build -t rewardhub-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch (trainer)

# --- build: the rewardhub wheel, from only the files the package needs -------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY rewardhub ./rewardhub
COPY services ./services
COPY trainer ./trainer
COPY webui ./webui
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- web UI libraries (KaTeX, Chart.js) from npm, as pinned in webui/package-lock.json ---------
FROM node:20-slim AS webui
WORKDIR /webui
COPY webui/package.json webui/package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    REWARDHUB_DATA_DIR=/data

# The sandbox service isolates every run with bubblewrap and runs these toolchains (the image's
# Python, with numpy and sympy from the project's dependencies, is the sandbox's Python).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap g++ nodejs libseccomp2 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from its own index, in its own layer: it changes rarely and is the largest part.
# With torch==2.13.0 installed, the project's pin is satisfied and pip pulls no other build.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

COPY --from=build /wheels /tmp/wheels
# The wheel with the server and train extras (the bare wheel is only the light client).
RUN pip install "$(ls /tmp/wheels/rewardhub-*.whl)[server,train]" && rm -rf /tmp/wheels
# The annotation service serves them from the installed webui package's node_modules.
COPY --from=webui /webui/node_modules /usr/local/lib/python3.11/site-packages/webui/node_modules

RUN useradd --create-home --uid 10001 --user-group rewardhub \
    && mkdir -p /data && chown rewardhub:rewardhub /data
USER rewardhub
WORKDIR /home/rewardhub
EXPOSE 8000
ENTRYPOINT ["rewardhub"]
CMD ["serve", "gateway", "--host", "0.0.0.0", "--port", "8000"]
