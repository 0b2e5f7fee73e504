"""Exporting a run (or a slice of it) to netCDF, Zarr or ``.npz``, and reading such a file back.

A dataset from :func:`~trajscope.store.reader.open_run` already carries plain attributes
(:mod:`trajscope.store.dataset_attrs`), so ``ds.to_netcdf()`` and ``ds.to_zarr()`` work on it directly.
:func:`export` adds what a plain call does not: a step/variable selection, one command for three formats,
and files that round-trip any dataset. :func:`portable` writes every attribute that is not a plain ASCII
string or a number as JSON text (a dataset opened with plain ``xr.open_zarr`` still has nested ones) and
names those attributes (and any variable whose dtype netCDF-3 would change, for a machine whose only
netCDF writer is scipy's) in the attribute :data:`MARKER`; :func:`restore` undoes both, so
``restore(open(export(ds)))`` equals ``ds``. A Zarr export replaces only the stored chunk encoding by the
dataset's own (uniform) dask chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import uuid
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xarray as xr

from trajscope.store.dataset_attrs import decode_attrs, encode_attrs, is_plain, json_default, set_finite_or_null
from trajscope.store.errors import UserError
from trajscope.store.layout import ALL_CHUNKS_STORED_BODY, ALL_CHUNKS_STORED_KEY, RUN_SUFFIX, RUN_UID, validate_run_id
from trajscope.store.safe import is_inside, zarr_store_holding

MARKER = "trajscope_export"
FORMATS = {".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".zarr": "zarr", ".npz": "npz"}


def drop_chunk_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Forget the stored chunk shape of every variable (in place; returns ``ds``).

    After a selection the dask chunks no longer line up with the stored ones and xarray's ``to_zarr``
    refuses the stored ``encoding['chunks']``; without it, ``to_zarr`` writes the dask chunks.
    """
    for var in ds.variables.values():
        var.encoding.pop("chunks", None)
    return ds


def _encode_attrs(attrs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out, encoded = {}, []
    for key, value in attrs.items():
        if is_plain(value):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=json_default, allow_nan=True)
            encoded.append(key)
    return out, encoded


def portable(ds: xr.Dataset) -> xr.Dataset:
    """A copy of ``ds`` that any netCDF writer accepts: attributes as above, no backend encodings."""
    out = ds.copy(deep=False)
    marker: dict[str, Any] = {"attrs": {}, "dtypes": {}}
    out.attrs, marker["attrs"][""] = _encode_attrs(ds.attrs)
    for name, var in out.variables.items():
        var.attrs, encoded = _encode_attrs(dict(ds[name].attrs))
        if encoded:
            marker["attrs"][str(name)] = encoded
        var.encoding = {}
        if var.dtype in (np.int64, np.uint64, np.uint32, np.uint16, np.bool_):  # netCDF-3 changes these
            marker["dtypes"][str(name)] = var.dtype.str
    out.attrs[MARKER] = json.dumps(marker)
    return out


def restore(ds: xr.Dataset) -> xr.Dataset:
    """Undo :func:`portable` on a dataset read back from a file (a no-op on other datasets)."""
    if MARKER not in ds.attrs:
        return ds
    out = ds.copy(deep=False)
    marker = json.loads(out.attrs.pop(MARKER))
    # numbers as Python's, as the run's own attributes are (netCDF hands them back as numpy scalars, which
    # json.dumps refuses: found by a review)
    out.attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in out.attrs.items()}
    for name, keys in marker["attrs"].items():
        attrs = out.attrs if name == "" else out[name].attrs
        for key in keys:
            attrs[key] = json.loads(attrs[key])
    for name, dtype in marker["dtypes"].items():
        if out[name].dtype != np.dtype(dtype):
            out[name] = out[name].astype(dtype)
    for var in out.variables.values():
        var.encoding = {}
    return out


def no_state_reason(step: slice, steps: np.ndarray) -> str:
    """Why ``step=slice(a, b)`` selects no recorded state of steps ``steps`` (sorted, not empty): the range is
    outside them, or falls between two of them (a sparse or log schedule). Every reader says it so (``ds.traj``,
    the CLI, the API's selectors)."""
    a, b = step.start, step.stop
    if a is not None and b is not None and b < a and b >= 0:  # (a review: "the run has steps 0 to 100" for 50:20
        return f"the first step must not exceed the last (a:b includes both ends), e.g. {b}:{a}"  # said nothing)
    if (a is not None and a > steps[-1]) or (b is not None and b < steps[0]):
        return f"the run has steps {steps[0]} to {steps[-1]} (a:b names steps, both ends included)"
    i = int(np.searchsorted(steps, a, "left"))  # (a is not None here: the range lies inside the recorded steps)
    return f"it falls between the recorded steps {steps[i - 1]} and {steps[i]}; widen it"


def no_state_message(step: slice, steps: np.ndarray) -> str:
    """``no recorded state in steps a:b: `` and :func:`no_state_reason`."""
    a, b = step.start, step.stop
    return f"no recorded state in steps {'' if a is None else a}:{'' if b is None else b}: {no_state_reason(step, steps)}"


def check_step_slice(step: slice) -> None:
    """A :class:`UserError` unless ``step`` is ``slice(a, b, s)`` of integers (or ``None``) with ``s`` ≥ 1 (a Python
    caller's ``slice(0, 100, -1)`` would have read the states backwards, ``slice("0", 5)`` failed inside xarray)."""
    if not isinstance(step, slice) or not all(
            part is None or isinstance(part, (int, np.integer)) and not isinstance(part, bool)
            for part in (step.start, step.stop, step.step)):
        raise UserError(f"step={step!r}: give slice(a, b, s) of integers (optimizer steps a to b, every s-th "
                        "recorded state), e.g. slice(0, 5000, 10)")
    if step.step is not None and step.step < 1:
        raise UserError(f"step={step!r}: the stride s must be a positive integer")


def select(ds: xr.Dataset, step: slice | None = None, variables: Iterable[str] | None = None) -> xr.Dataset:
    """The variables ``variables`` (all when ``None``; coordinates always kept) of the states in ``step``.

    ``step`` is ``slice(a, b, s)``: optimizer steps ``a`` to ``b`` (both included), every ``s``-th
    recorded state. An empty selection or an unknown variable is a :class:`UserError`.
    """
    out = ds
    if variables:
        names = list(dict.fromkeys(variables))
        unknown = [v for v in names if v not in ds.data_vars]
        if unknown:
            raise UserError(f"no variable {', '.join(map(repr, unknown))} in the run: "
                            f"choose from {', '.join(map(str, ds.data_vars))}")
        out = out[names]
        if "step" in ds.dims and "step" not in out.dims:  # (found by a review: such a copy kept the run's
            over = [str(v) for v in ds.data_vars if "step" in ds[v].dims]  # committed_steps, and no run opened it)
            raise UserError(f"the variables {', '.join(names)} hold no state of the trajectory (no step): add one "
                            f"of {', '.join(over[:6])}{'...' if len(over) > 6 else ''}")
    if step is not None and "step" in out.dims:
        check_step_slice(step)
        if ds.sizes["step"] == 0:
            raise UserError("the run has no recorded state yet: there is no step to select")
        out = out.sel(step=slice(step.start, step.stop)).isel(step=slice(None, None, step.step))
        if out.sizes["step"] == 0:
            raise UserError(no_state_message(step, np.asarray(ds["step"].values)))
    return out


def export(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path``; the suffix picks the format: ``.nc`` (netCDF), ``.zarr`` or ``.npz``.

    netCDF and ``.npz`` files go through :func:`portable` (read them back with :func:`read_export`);
    a Zarr export is a plain Zarr v3 group with the run's attributes, which ``trajscope.open_run`` and
    ``xr.open_zarr`` open. ``committed_steps`` is set to the number of exported states. Refuses to
    overwrite an existing file.
    """
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(path)):  # (a Path has made s3://b/x into s3:/b/x: said as given)
        url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", str(path))
        raise UserError(f"cannot export to {url!r}: export writes a local file; copy it to the object store "
                        "afterwards, or record the run there with --root")
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"cannot export to {path.name!r}: the file name must end in "
                        f"{', '.join(sorted(set(FORMATS)))}")
    if kind == "zarr" and not _is_run_name(path):  # (a review: such a copy was written, then open_run refused it)
        raise UserError(f"cannot export to {path.name!r}: a Zarr export is a run, named RUN{RUN_SUFFIX} with RUN of "
                        "1-128 characters from A-Z a-z 0-9 . _ - starting with a letter or digit; choose such a name")
    if os.path.lexists(path):  # (a link too, dangling or not: never written through)
        raise UserError(f"{str(path)!r} exists: remove it or choose another output file")
    if not path.parent.is_dir():
        raise UserError(f"directory {str(path.parent)!r} does not exist (or is not a folder): create it or choose "
                        "another output file")
    inside = zarr_store_holding(path.parent)
    if inside is not None:
        raise UserError(f"{str(path)!r} is inside the Zarr store {str(inside)!r} (a run, an export...): its files "
                        "would be taken for part of it and deleted with it; write the export outside it")
    with _ctrl_c_kept() as interrupted:  # (from the first read of the run's data on: copy_attrs reads the loss)
        ds = ds.copy(deep=False)
        ds.attrs = copy_attrs(ds)
        if "step" in ds.dims:
            chunk = int(ds.attrs.get("chunk_steps") or 0) or None
            ds = ds.chunk({"step": chunk or "auto"})  # uniform chunks, as Zarr needs
        if kind == "zarr":  # a run: its attributes nested, as the store writes them (the writers read them so), and
            ds.attrs = own_run_attrs(decode_attrs(ds.attrs), path.stem, ds)  # its own (found by a review)
        drop_chunk_encoding(ds)
        # written under a hidden temporary name, renamed when whole: an export stopped half-way (Ctrl-C, a corrupt
        # chunk, a full disk) left a file that opened as the complete run full of NaNs (found by a review)
        if len(path.name.encode()) > NAME_MAX:
            raise UserError(f"the output file name is {len(path.name.encode())} bytes long; file systems take at most "
                            f"{NAME_MAX}: choose a shorter name")
        partial = partial_path(path)
        try:
            try:
                _write(ds, partial, kind)
                if interrupted:  # a Ctrl-C Python swallowed (_ctrl_c_kept): the export ends interrupted all the same
                    raise KeyboardInterrupt
            except OSError as err:  # the output's own (h5py's names no file; ours names the hidden one): one line
                if err.filename is not None and not is_inside(os.path.realpath(partial), err.filename):  # naming the
                    raise  # user's path (found by a review: zarr names the hidden copy by its absolute path, or a file in it)
                why = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
                raise UserError(f"cannot write {path}: {why}; choose another output file") from None
            taken = UserError(f"{str(path)!r} was created while the export was written: nothing was replaced")
            if os.path.lexists(path):  # made meanwhile by someone else: theirs stays
                raise taken
            if partial.is_dir():
                os.rename(partial, path)
            else:  # a hard link never replaces a name made since the check above (a rename would)
                try:
                    os.link(partial, path)
                except FileExistsError:
                    raise taken from None
                except OSError:  # a file system without hard links
                    os.rename(partial, path)
                partial.unlink()
        except BaseException:
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)
            elif os.path.lexists(partial):
                partial.unlink()
            raise
    return path


@contextlib.contextmanager
def _ctrl_c_kept():
    """Yield a list that a Ctrl-C during the block makes non-empty; the export checks it once written. A Ctrl-C
    raises ``KeyboardInterrupt`` where Python happens to be, and where that is a weakref callback or a ``__del__``
    (h5py closing its objects), Python prints "Exception ignored" and goes on (found by a review: a netCDF export
    went on to its end and exited 0): such an export is still ended as interrupted, leaving nothing, once written.
    The SIGINT handler in place is kept and wrapped (main thread only): what it raises ``KeyboardInterrupt`` for is
    noted; one that ignores the signal still does."""
    interrupted: list[bool] = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield interrupted  # (SIG_IGN: Ctrl-C ignored; SIG_DFL: it kills the process; None: not set from Python)
        return

    def on_sigint(signum, frame):
        try:
            previous(signum, frame)
        except KeyboardInterrupt:
            interrupted.append(True)
            raise

    try:
        signal.signal(signal.SIGINT, on_sigint)
        yield interrupted
    finally:  # (a second Ctrl-C landing in the restore, which runs pending handlers first: restored all the same)
        stopped = None
        while True:
            try:
                signal.signal(signal.SIGINT, previous)
                break
            except KeyboardInterrupt as exc:
                stopped = exc
        if stopped is not None:
            raise stopped


#: the longest file name most file systems take (bytes)
NAME_MAX = 255


def partial_path(path: Path) -> Path:
    """The hidden name an export is written under, beside ``path``: ``.STEM.partial-XXXXXXXX.SUFFIX``, the stem
    cut so that the name fits :data:`NAME_MAX` bytes (found by a review: a legal 240-character output name made
    a temporary one too long to create)."""
    tail = f".partial-{uuid.uuid4().hex[:8]}{path.suffix}"
    room = NAME_MAX - 1 - len(tail.encode())
    stem = path.stem.encode()[:max(room, 1)].decode(errors="ignore")
    return path.parent / f".{stem}{tail}"


def _is_run_name(path: Path) -> bool:
    """Whether ``path``'s name is ``RUN.zarr`` for a valid run id (what ``open_run`` and ``ls`` take)."""
    try:
        return path.suffix == RUN_SUFFIX and validate_run_id(path.stem) == path.stem
    except UserError:
        return False


def copy_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The run attributes a copy of ``ds`` (a selection of states and variables) holds, true of the copy (found by
    a review: a copy kept the whole run's): ``committed_steps`` and ``capacity`` its states; ``time_variables``
    and ``schema``'s variables those it holds; ``last_step`` and ``final_loss`` its last state's; no ``writer``
    lease; a run still ``running`` when copied is ``interrupted`` in the copy (no writer will ever add to it);
    ``exported_from`` names the run copied (``resume`` refuses a copy: its chunks are laid out for reading)."""
    attrs = decode_attrs(ds.attrs)
    if attrs.get("run_id") and "exported_from" not in attrs:
        attrs["exported_from"] = {"run_id": attrs["run_id"], "run_uid": attrs.get(RUN_UID)}
    attrs.pop("root", None)  # where the source was read from (open_run's): not the copy's, and no path of this
    if "step" not in ds.dims:
        return encode_attrs(attrs)
    states = int(ds.sizes["step"])
    attrs["committed_steps"] = attrs["capacity"] = states
    attrs.pop("writer", None)
    if attrs.get("status") == "running":
        attrs["status"] = "interrupted"
    if isinstance(attrs.get("time_variables"), list):
        attrs["time_variables"] = [n for n in attrs["time_variables"] if n in ds.variables]
    schema = attrs.get("schema")
    if isinstance(schema, dict) and isinstance(schema.get("variables"), dict):
        attrs["schema"] = {**schema, "variables": {n: v for n, v in schema["variables"].items() if n in ds.variables}}
    if states and "step" in ds.coords:
        attrs["last_step"] = int(ds["step"][-1])
    if states and "loss" in ds.variables and ds["loss"].dims == ("step",):
        set_finite_or_null(attrs, {"final_loss": float(ds["loss"][-1])})  # (the last state alone is read)
    elif "final_loss" in attrs:
        set_finite_or_null(attrs, {"final_loss": None})
    return encode_attrs(attrs)


def own_run_attrs(attrs: dict[str, Any], run_id: str, ds: xr.Dataset) -> dict[str, Any]:
    """What makes a Zarr export a run of its own (found by a review: it kept the source's): ``run_id`` its name,
    a ``run_uid`` of its own (a cache never takes it for the source, nor the source for it) and ``chunk_steps``
    its own chunks' length along ``step`` (``exported_from`` names the source)."""
    attrs = {**attrs, "run_id": run_id, RUN_UID: uuid.uuid4().hex}
    if ds.chunks and "step" in ds.chunks and ds.chunks["step"]:
        attrs["chunk_steps"] = int(ds.chunks["step"][0])
    return attrs


def _write(ds: xr.Dataset, path: Path, kind: str) -> None:
    if kind == "zarr":
        # every chunk stored, an all-NaN one too, as the store's writer does, and so marked: a chunk lost later
        # reads as a loss (CorruptData), not as NaN (found by a review: the marker was missing); consolidated on
        # purpose, as a finished run is (zarr warns that v3 has no such thing in its spec)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            pending = ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=True, write_empty_chunks=True,
                                 compute=False)
            # on threads of its own, waited for: after a failed write (a full disk) or a Ctrl-C, no write goes on
            # beside the removal of the partial copy (found by a review: dask's shared threads went on, and it was
            # sometimes left behind); dask hands a pool at most one task a thread at a time
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="export") as pool:
                pending.compute(scheduler="threads", pool=pool)
        (path / ALL_CHUNKS_STORED_KEY).write_bytes(ALL_CHUNKS_STORED_BODY)
    elif kind == "netcdf":
        # the writes in this thread only: a Ctrl-C then stops every write before the partial file is removed
        # (found by a review: dask's write threads went on and made the removed file again); HDF5 writes one at
        # a time anyway
        pending = portable(ds).to_netcdf(path, compute=False)
        if pending is not None:
            pending.compute(scheduler="synchronous")
    else:
        flat = portable(ds)
        arrays = {str(name): var.values for name, var in flat.variables.items()}
        layout = {str(name): {"dims": list(var.dims), "attrs": var.attrs} for name, var in flat.variables.items()}
        arrays["__layout__"] = np.array(json.dumps({"attrs": flat.attrs, "variables": layout,
                                                    "coords": [str(c) for c in flat.coords]}))
        # the archive np.savez writes (NAME.npy members, read back by np.load), written here: np.savez takes a
        # variable named `file` or `allow_pickle` for its own argument (found by a review: one was dropped
        # silently, the other a TypeError); `xb`: a name np.savez would extend (`x.NPZ` became `x.NPZ.npz`)
        with open(path, "xb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, values in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(values), allow_pickle=False)


def read_export(path: str | os.PathLike) -> xr.Dataset:
    """Read a file written by :func:`export` back into the dataset that was exported."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind == "zarr":  # (stored nested, as a run's are: handed out as open_run hands them out)
        ds = xr.open_zarr(path, zarr_format=3)
        ds.attrs = encode_attrs(ds.attrs)
        return ds
    if kind == "netcdf":
        with xr.open_dataset(path) as opened:
            return restore(opened.load())
    if kind == "npz":
        with np.load(path, allow_pickle=False) as data:
            layout = json.loads(str(data["__layout__"]))
            variables = {name: xr.Variable(spec["dims"], data[name], spec["attrs"])
                         for name, spec in layout["variables"].items()}
        coords = {name: variables.pop(name) for name in layout["coords"]}
        return restore(xr.Dataset(variables, coords=coords, attrs=layout["attrs"]))
    raise UserError(f"cannot read {path.name!r}: not a .nc, .zarr or .npz export")
