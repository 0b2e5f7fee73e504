# The trajscope producer: trains and records a run, `trajscope produce CONFIG [--set ...]`, into a
# mounted root (/runs, the default) or an s3:// root (--root s3://bucket/prefix, AWS_* variables).
# Non-root. The default torch wheels carry their CUDA libraries, so this slim image runs on a GPU with
# the NVIDIA container toolkit (`--gpus all`, or compose's gpu profile). The configs of the repository
# are in the working directory: configs/quickstart.yaml, configs/paper/*.yaml.
#
#   podman build --format docker -f docker/producer.Dockerfile -t trajscope-producer .
#   podman run --rm -v runs:/runs trajscope-producer configs/quickstart.yaml
#
# Build arguments: BASE (the Python image), TORCH (the torch requirement: default the CUDA build from
# the package index; `--build-arg TORCH=torch==2.13.0` picks a CPU wheel where one is on the pip path).
ARG BASE=python:3.12-slim

# -- the trajscope wheel: identical to the first stage of api.Dockerfile, so one build cache holds it once
FROM ${BASE} AS wheel
COPY pyproject.toml README.md /src/
COPY trajscope /src/trajscope
COPY store /src/store
COPY producer /src/producer
COPY analysis /src/analysis
COPY api /src/api
COPY configs /src/configs
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

# -- the image
FROM ${BASE}
ENV VIRTUAL_ENV=/opt/trajscope \
    PATH=/opt/trajscope/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    TRAJSCOPE_ROOT=/runs \
    TRAJSCOPE_PORT=8000
# the same layers as api.Dockerfile up to here (one cache; the packages' own test suites left out), then torch
RUN useradd --create-home --uid 10001 --user-group trajscope \
 && mkdir /runs && chown trajscope:trajscope /runs \
 && python -m venv "$VIRTUAL_ENV"
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/pyproject.toml s3 distributed > /tmp/deps/requirements.txt \
 && pip install --no-cache-dir -r /tmp/deps/requirements.txt \
 && find "$VIRTUAL_ENV" -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + \
 && rm -rf /tmp/deps
ARG TORCH=torch
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/pyproject.toml producer > /tmp/deps/requirements.txt \
 && pip install --no-cache-dir "$TORCH" -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY configs /opt/trajscope/share/configs
COPY docker/entry.py /opt/trajscope/share/
USER trajscope
WORKDIR /opt/trajscope/share
# `trajscope produce` as PID 1, obeying SIGTERM from its first instruction (entry.py); other commands:
# --entrypoint trajscope (e.g. `podman run --rm -v runs:/runs --entrypoint trajscope IMAGE resume RUN`)
ENTRYPOINT ["python", "/opt/trajscope/share/entry.py", "produce"]
CMD ["configs/quickstart.yaml"]
