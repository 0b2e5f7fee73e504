"""Health check of the API image: exit 0 when ``GET /health`` on ``$TRAJSCOPE_PORT`` answers ``status: ok``."""

import json
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('TRAJSCOPE_PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        status = json.load(response).get("status")
except Exception as err:  # any failure to answer is unhealthy
    sys.exit(f"unhealthy: {url}: {err}")
sys.exit(0 if status == "ok" else f"unhealthy: {url} says status {status!r}")
