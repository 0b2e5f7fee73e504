# The trajscope API: runs, slices, analyses, figures, the dashboard and the raw Zarr store over HTTP.
# No torch (the light reader install: trajscope[s3,distributed]); the same image runs the dask
# scheduler and workers of the compose stack. Non-root; token from a secret file; health check on /health.
#
#   podman build --format docker -f docker/api.Dockerfile -t trajscope-api .
#   podman run -p 8000:8000 -e TRAJSCOPE_ROOT=s3://bucket/runs -e AWS_ENDPOINT_URL=... trajscope-api
#
# --format docker keeps the HEALTHCHECK (the OCI image format has none); docker builds keep it anyway.
ARG BASE=python:3.12-slim

# -- the trajscope wheel: identical to the first stage of producer.Dockerfile, so one build cache holds it once
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
# dependencies first, in their own layer (shared with producer.Dockerfile): code changes do not reinstall
# them; the packages' own test suites (~90 MB) are left out
RUN useradd --create-home --uid 10001 --user-group trajscope \
 && mkdir /runs && chown trajscope:trajscope /runs \
 && python -m venv "$VIRTUAL_ENV"
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/pyproject.toml s3 distributed > /tmp/deps/requirements.txt \
 && pip install --no-cache-dir -r /tmp/deps/requirements.txt \
 && find "$VIRTUAL_ENV" -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + \
 && rm -rf /tmp/deps
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY docker/serve.sh docker/healthcheck.py docker/entry.py /opt/trajscope/share/
USER trajscope
WORKDIR /home/trajscope
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/opt/trajscope/share/healthcheck.py"]
ENTRYPOINT ["/opt/trajscope/share/serve.sh"]
