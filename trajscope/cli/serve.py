"""``trajscope serve``: the HTTP API, the dashboard and the raw store of the runs under a root."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from trajscope.errors import UserError


def read_token(path: Path | None) -> str | None:
    """The token in ``path`` (first line, stripped); ``None`` without a file."""
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError as err:
        raise UserError(f"cannot read the token file {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError:  # (a binary file: found by a review)
        raise UserError(f"the token file {str(path)!r} is not text: put the token on its first line") from None
    token = text.splitlines()[0].strip() if text else ""
    if len(token) < 8:
        raise UserError(f"the token in {str(path)!r} is empty or shorter than 8 characters")
    return token


#: the range ``--max-response-mib`` takes (a cap under a few kB would refuse the dashboard's own requests; one
#: over 64 GiB is no cap)
MIN_RESPONSE_MIB, MAX_RESPONSE_MIB = 0.01, 65536.0


def check_port_free(host: str, port: int) -> None:
    """:class:`UserError` when ``host:port`` cannot be bound (in use, or no such interface), said before the
    server announces itself; the server binds it again right after (another process may still take it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"cannot serve on {host}:{port}: {err.strerror}; choose another --port") from None


#: interfaces that keep the server on this machine; it then answers only requests addressed to it by these names
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def serve(
    root: Annotated[Optional[str], typer.Option("--root", help="store root: a directory or an fsspec URL "
                                                "(s3://bucket/prefix); default $TRAJSCOPE_ROOT or ./runs")] = None,
    host: Annotated[str, typer.Option(help="interface to bind; 127.0.0.1 keeps it on this machine, "
                                      "0.0.0.0 exposes it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    token_file: Annotated[Optional[Path], typer.Option("--token-file", help="file holding a token; enables "
                                                       "DELETE /api/runs/RUN with 'Authorization: Bearer "
                                                       "TOKEN'. Without it the API is read-only")] = None,
    max_response_mib: Annotated[float, typer.Option(help="size cap of one slice or analysis response")] = 32.0,
    max_computations: Annotated[int, typer.Option(help="analyses, series, figures and slices computed at once; "
                                                  "more wait their turn (0: one per usable core, at least 2)")] = 0,
    access_log: Annotated[bool, typer.Option("--access-log", help="log every request (client, method, path, "
                                             "status) on stdout, apart from the warnings and errors on stderr")] = False,
) -> None:
    """Serve runs, slices, analyses, figures, a dashboard (/) and the raw Zarr store (/zarr/RUN)."""
    import uvicorn

    from trajscope.api.app import create_app
    from trajscope.store import StoreRoot

    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port (1-65535)")
    if not (math.isfinite(max_response_mib) and MIN_RESPONSE_MIB <= max_response_mib <= MAX_RESPONSE_MIB):
        raise UserError(f"--max-response-mib {max_response_mib}: a size in MiB from {MIN_RESPONSE_MIB} to "
                        f"{MAX_RESPONSE_MIB} (default 32)")
    token = read_token(token_file)
    store_root = StoreRoot(root)
    if store_root.is_local and not os.path.isdir(store_root.location):  # (a typo served "no runs yet": a review)
        what = "is a file, not a folder" if os.path.exists(store_root.location) else "does not exist"
        raise UserError(f"--root {store_root.location} {what}: give the folder the runs are recorded in "
                        "(`trajscope produce --root DIR` makes it; `mkdir` it to serve a root with no runs yet)")
    check_port_free(host, port)
    if max_computations < 0:
        raise UserError(f"--max-computations {max_computations}: give a positive number, or 0 for one per core")
    from trajscope.api.heap import bound_freed_heap

    bound_freed_heap()  # large freed blocks back to the system at once (found by a soak: 1.3 GB kept when idle)
    app = create_app(store_root, token=token, max_response_bytes=int(max_response_mib * 2**20),
                     max_computations=max_computations)
    if host in LOOPBACK_HOSTS:  # a page of another site, its name rebound to 127.0.0.1 (DNS rebinding), could
        from trajscope.api.guards import LoopbackHostOnly  # read the runs otherwise: a request naming another

        app.add_middleware(LoopbackHostOnly, names=LOOPBACK_NAMES)  # host is a 400
    typer.echo(f"trajscope: serving {store_root.location} on http://{host}:{port} "
               f"({'deletes enabled by token' if token else 'read-only'})", err=True)
    # SIGTERM/Ctrl-C: requests still computing get 5 s, then the server exits (a review found it waiting on an
    # analysis of many minutes after two SIGTERMs)
    uvicorn.run(app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log,
                timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    """Add ``trajscope serve`` to ``app``."""
    app.command("serve")(serve)
