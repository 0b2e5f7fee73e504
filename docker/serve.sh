#!/bin/sh
# Entrypoint of the API image: `trajscope serve` on every interface of the container.
#   port:  $TRAJSCOPE_PORT (default 8000; the health check asks the same port)
#   root:  $TRAJSCOPE_ROOT (default /runs; s3://bucket/prefix with the usual AWS_* variables)
#   token: the file named by $TRAJSCOPE_TOKEN_FILE, when set (compose: the secret trajscope_token,
#          /run/secrets/trajscope_token); without it the API is read-only.
# Further arguments go to `trajscope serve` (e.g. --max-response-mib 64).
set -eu
set -- --host 0.0.0.0 --port "${TRAJSCOPE_PORT:-8000}" "$@"
if [ -n "${TRAJSCOPE_TOKEN_FILE:-}" ]; then
  set -- "$@" --token-file "$TRAJSCOPE_TOKEN_FILE"
fi
exec python /opt/trajscope/share/entry.py serve "$@"  # (trajscope as PID 1, SIGTERM obeyed at once: entry.py)
