"""Writing figures to files (the I/O that ``analysis``, pure xarray → figures, does not do)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from trajscope.store.errors import UserError

FILE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format (``.png``, ``.svg`` or ``.pdf``)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FILE_FORMATS:
        raise UserError(f"cannot write {path.name!r}: the output file must end in .png, .svg or .pdf")
    try:
        fig.savefig(path, format=fmt, dpi=120)
    except OSError as err:  # a folder that is a file, a missing folder, a path that is a folder...
        raise UserError(f"cannot write {path}: {err.strerror}; choose another output file") from None
    return path
