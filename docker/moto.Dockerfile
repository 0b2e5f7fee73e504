# An S3-compatible server for trying the compose stack and for its test: moto's server mode, in memory
# (nothing survives a restart). In production use MinIO or a cloud bucket instead (see README, Containers).
# Only the S3 service and the server (flask) are installed, not moto[server] with every AWS service.
#
#   podman build -f docker/moto.Dockerfile -t trajscope-moto .
ARG BASE=python:3.12-slim
FROM ${BASE}
RUN python -m venv /opt/moto \
 && /opt/moto/bin/pip install --no-cache-dir "moto[s3]>=5" flask flask-cors \
 && useradd --uid 10002 --no-create-home --user-group moto
USER moto
EXPOSE 5000
ENTRYPOINT ["/opt/moto/bin/moto_server", "--host", "0.0.0.0", "--port", "5000"]
