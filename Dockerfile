# syntax=docker/dockerfile:1.7
# Three images from one file; docker-compose.yml and the Helm chart give each its command
# (`serve gateway`, `serve verifier`, `worker`, `migrate`, ...). Each installs a lock file from
# requirements/ (every package pinned with its sha256; `make lock` regenerates them).
#
#   docker build --target light   -t rewardhub-light .   # gateway, verifier, sandbox, rubric_rm, migrate (no torch)
#   docker build --target gpu     -t rewardhub-gpu .     # the trainer on NVIDIA GPUs (CUDA torch, vLLM, DeepSpeed)
#   docker build --target trainer -t rewardhub .         # the default: CPU torch; runs every component
#
# The light image holds the `server` extra only; the annotation service (CARE's probes), the
# trainer service and the Celery worker (it imports the trainer's run supervisor) import torch at
# start and run the trainer image. Base images are pinned by exact tag; to pin the digest too:
#   docker buildx imagetools inspect python:3.11.16-slim-bookworm    # prints "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.11.16-slim-bookworm@sha256:<digest> ...
# (the same for NODE_IMAGE); the README's Docker section says when to refresh them.
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm
ARG NODE_IMAGE=node:20.19.5-bookworm-slim

# --- build: the rewardhub wheel, from only the files the package needs -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY rewardhub ./rewardhub
COPY services ./services
COPY trainer ./trainer
COPY webui ./webui
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# --- web UI libraries (KaTeX, Chart.js) from npm, as pinned in webui/package-lock.json ---------
FROM ${NODE_IMAGE} AS webui
WORKDIR /webui
COPY webui/package.json webui/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --omit=dev

# --- base: what every runtime image shares (system packages, user, init, labels) ------------
FROM ${PYTHON_IMAGE} AS base
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Where the source lives is the publisher's to say: `--build-arg SOURCE_URL=https://...`.
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="rewardhub" \
      org.opencontainers.image.description="Reward-and-labeling platform for RL from verifiable rewards" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    REWARDHUB_DATA_DIR=/data
# tini is PID 1 in every runtime (Kubernetes has no `init: true`): it reaps the sandbox's forked
# runs and the trainer's run workers, and passes SIGTERM on so uvicorn drains. The sandbox
# isolates every run with bubblewrap and runs these toolchains (the image's Python, with numpy and
# sympy from the lock, is the sandbox's Python); the GPU trainer's Triton kernels need the compiler.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends tini bubblewrap g++ nodejs libseccomp2
RUN useradd --create-home --uid 10001 --user-group rewardhub \
    && mkdir -p /data && chown rewardhub:rewardhub /data
WORKDIR /home/rewardhub
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--", "rewardhub"]
CMD ["serve", "gateway", "--host", "0.0.0.0", "--port", "8000"]

# --- light: the HTTP services that import no torch (requirements/server.lock) ---------------
FROM base AS light
LABEL org.opencontainers.image.title="rewardhub-light"
COPY requirements/server.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes -r /tmp/requirements.lock
# The wheel without its dependencies: the lock above is the complete set, and `pip check` proves it.
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/rewardhub-*.whl && pip check
# The annotation service serves them from the installed webui package's node_modules.
COPY --from=webui /webui/node_modules /usr/local/lib/python3.11/site-packages/webui/node_modules
USER rewardhub

# --- gpu: the trainer on NVIDIA GPUs (requirements/gpu.lock: PyPI's CUDA torch, vLLM, DeepSpeed) --
FROM base AS gpu
LABEL org.opencontainers.image.title="rewardhub-gpu"
COPY requirements/gpu.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes -r /tmp/requirements.lock
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/rewardhub-*.whl && pip check
COPY --from=webui /webui/node_modules /usr/local/lib/python3.11/site-packages/webui/node_modules
USER rewardhub
CMD ["serve", "trainer", "--host", "0.0.0.0", "--port", "8000"]

# --- trainer (default): CPU torch; runs every component (requirements/train.lock) -----------------
FROM base AS trainer
LABEL org.opencontainers.image.title="rewardhub-trainer"
# torch==2.13.0+cpu is only on torch's CPU index; its hash in the lock is that wheel's.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/train.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements.lock
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/rewardhub-*.whl && pip check
COPY --from=webui /webui/node_modules /usr/local/lib/python3.11/site-packages/webui/node_modules
USER rewardhub
