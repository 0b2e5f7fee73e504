"""Writing figures (and a report's other files) to local files: the I/O that ``analysis``, pure xarray → figures,
does not do."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

from matplotlib.figure import Figure

from trajscope.store.errors import UserError
from trajscope.store.export import partial_path
from trajscope.store.safe import zarr_store_holding

FILE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format (``.png``, ``.svg`` or ``.pdf``).

    Written under a hidden name beside ``path``, then renamed over it: a link of that name is replaced, never
    written through (found by a review: ``plot -o`` through a link to a run's ``zarr.json`` overwrote it), and a
    figure stopped half-way leaves no half file. A path inside a Zarr store (a run, an export) is refused: its
    files would be taken for part of the store and deleted with it.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FILE_FORMATS:
        raise UserError(f"cannot write {path.name!r}: the output file must end in .png, .svg or .pdf")
    inside = zarr_store_holding(path.parent) if path.parent.is_dir() else None
    if inside is not None:
        raise UserError(f"{str(path)!r} is inside the Zarr store {str(inside)!r} (a run, an export...): its files "
                        "would be taken for part of it and deleted with it; write the figure outside it")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    write_replacing(path, buffer.getvalue())
    return path


def write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` under a hidden name beside it, renamed over it when whole: a link
    of that name is replaced, not written through. A file replaced keeps its permission bits (not its owner, nor
    its hard links: it is a new file); a new one gets the umask's. Not fsynced (a figure, a report: made again by
    the same command). An :class:`OSError` (a missing folder, a folder in the way, a folder this user may not
    write in) is a one-line :class:`UserError` naming ``path``."""
    partial = partial_path(path)
    try:
        try:
            replaced = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            replaced = None
        with open(partial, "xb") as handle:
            if replaced is not None and stat.S_ISREG(replaced.st_mode):  # (found by a review: 0600 became 0644)
                os.fchmod(handle.fileno(), stat.S_IMODE(replaced.st_mode))
            handle.write(data)
        os.replace(partial, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise UserError(f"cannot write {path}: {err.strerror}; choose another output file") from None
