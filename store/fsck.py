"""``fsck``: verify a run end to end, and finish what a crash left half done.

:func:`fsck_run` checks, in order:

1. **links**: no file or directory of the run resolves outside the store root (local roots);
2. **attributes**: the root document parses, ``status`` is known, ``0 <= committed_steps <= capacity``,
   ``chunk_steps``/``time_variables`` present; a run left ``creating`` or ``running`` by a dead writer;
3. **shapes**: every array's metadata parses, time-varying arrays hold at least ``committed_steps``
   states (exactly that many once finished), every other dimension has one length across arrays, and a
   finished run's root document carries consolidated metadata matching its arrays;
4. **chunks**: every chunk covering a committed state (and every chunk of the static arrays) is present
   and decodes with a valid crc32c checksum.

``repair=True`` (under the writer lock, so never against a live writer) finishes what an interrupted
create, finish or resume leaves: a half-created run is removed (nothing was recorded in it), a
``running`` run whose writer died is finished as ``interrupted`` (then ``trajscope resume`` continues it),
a finished run gets its final document and shrunk arrays. Lost or corrupt committed chunks cannot be
repaired; they are reported.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trajscope.store.chunkio import remove_stale_temporaries, stale_temporaries
from trajscope.store.dataset_attrs import run_attr, set_finite_or_null
from trajscope.store.schema import is_module_run
from trajscope.store.errors import CorruptChunk, CorruptData, MalformedRun, PathOutsideRoot, RunLocked, UserError
from trajscope.store.integrity import find_corrupt_chunks, is_checksum_error
from trajscope.store.layout import COMMITTED, STATUSES, STEP_DIM, check_format, never_fully_created
from trajscope.store.locks import WriterLock, writer_holds
from trajscope.store.root import StoreRoot
from trajscope.store.safe import is_inside
from trajscope.store.snapshot import METADATA_KEY, _array_names

#: the most corrupt chunks of one array a report names
MAX_NAMED = 20


@dataclass
class FsckReport:
    """What :func:`fsck_run` found (``problems``, after any repair) and did (``repaired``)."""

    run_id: str
    status: str = "unknown"
    committed: int = 0
    chunks_verified: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem remains."""
        return not self.problems

    def summary(self) -> str:
        """One line: the verdict, the status, the committed states and the chunks verified."""
        verdict = "ok" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        fixed = f", {len(self.repaired)} repaired" if self.repaired else ""
        return (f"run {self.run_id!r}: {verdict}{fixed} (status {self.status}, {self.committed} states committed, "
                f"{self.chunks_verified} chunks verified)")


def _links_leaving(root: StoreRoot, run_id: str) -> list[str]:
    if not root.is_local:
        return []
    run_dir = root.run_url(run_id)
    if not is_inside(root.location, run_dir):
        return [f"the run directory links outside the store root (-> {os.path.realpath(run_dir)})"]
    found = []
    for directory, dirs, files in os.walk(run_dir, followlinks=False):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not is_inside(root.location, path):
                key = os.path.relpath(path, run_dir)
                found.append(f"{key} links outside the store root (-> {os.readlink(path)}); it is never read")
    return found


def _writer_alive(root: StoreRoot, run_id: str) -> bool:
    """True when some writer holds the run now (local: its flock; remote: a fresh lease)."""
    try:
        WriterLock(root, run_id).acquire().release()
    except RunLocked:
        return True
    return False


def _chunk_keys(name: str, meta: dict[str, Any], stop: int | None) -> list[str]:
    """Keys of the chunks covering ``[0, stop)`` along the first axis (all of them when ``stop`` is None)."""
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    encoding = meta.get("chunk_key_encoding") or {}
    separator = (encoding.get("configuration") or {}).get("separator", "/")
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    if stop is not None:
        counts[0] = math.ceil(min(stop, shape[0]) / chunks[0])
    keys = []
    for index in itertools.product(*(range(n) for n in counts)):
        parts = [str(i) for i in index]
        key = separator.join(parts) if encoding.get("name") == "v2" else separator.join(["c", *parts])
        keys.append(f"{name}/{key}")
    return keys


def _verify_chunks(root: StoreRoot, run_id: str, arrays: dict[str, dict[str, Any]], committed: int,
                   report: FsckReport) -> None:
    import zarr

    group = None
    for name, meta in sorted(arrays.items()):
        time_varying = (meta.get("dimension_names") or [None])[0] == STEP_DIM
        keys = _chunk_keys(name, meta, committed if time_varying else None)
        missing, outside = [], []
        for key in keys:
            try:
                root.read_bytes(run_id, key)
            except KeyError:
                missing.append(key)
            except PathOutsideRoot:
                outside.append(key)  # reported with the links
        if missing:
            report.problems.append(f"{len(missing)} committed chunk(s) of {name} are missing, e.g. {missing[0]}")
        if missing or outside:
            continue
        if group is None:
            group = zarr.open_group(root.zarr_store(run_id, read_only=True), mode="r", use_consolidated=False)
        array = group[name]
        step = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        stop = committed if time_varying else int(meta["shape"][0])
        for start in range(0, stop, step):
            try:
                np.asarray(array[start:min(start + step, stop)])  # the codec pipeline verifies the crc32c
            except Exception as err:  # noqa: BLE001 - a checksum or decode error names the corruption
                if not is_checksum_error(err):
                    report.problems.append(f"chunk of {name} at index {start} does not decode: {type(err).__name__}: "
                                           f"{err}")
                    continue
                # named chunk by chunk, as every other command names them (found by a review: zarr's message
                # named no chunk and printed the stored and computed checksums' raw bytes)
                for chunk in find_corrupt_chunks(root, run_id, [name], limit=MAX_NAMED) or [CorruptChunk(name, "?")]:
                    report.problems.append(f"chunk {chunk.describe()} of {name} fails its crc32c checksum (its "
                                           "bytes changed on storage): restore the run from a copy, or record it again")
                break  # (every corrupt chunk of the array is named above)
        report.chunks_verified += len(keys)


def _read_arrays(root: StoreRoot, run_id: str, report: FsckReport) -> dict[str, dict[str, Any]]:
    arrays = {}
    for name in _array_names(root, run_id, {}):
        try:
            meta = json.loads(root.read_bytes(run_id, f"{name}/{METADATA_KEY}"))
        except KeyError:
            continue
        except (ValueError, UserError) as err:
            report.problems.append(f"metadata of {name} is unreadable: {err}")
            continue
        if meta.get("node_type") == "array":
            arrays[name] = meta
    return arrays


def fsck_run(root: StoreRoot, run_id: str, *, repair: bool = False) -> FsckReport:
    """Verify run ``run_id`` under ``root`` (see the module doc); with ``repair``, finish what a crash left.

    Returns a :class:`FsckReport`; raises :class:`~trajscope.store.errors.RunNotFound` when there is no run.
    """
    report = FsckReport(run_id)
    report.problems.extend(_links_leaving(root, run_id))
    if root.is_local and not is_inside(root.location, root.run_url(run_id)):
        return report  # nothing of it is read
    if root.has_leftovers(run_id):  # (it said "no run", though `ls` lists them and `rm` removes them)
        report.status = "deleting"
        report.problems.append("left by a stopped deletion (no root document): no run to check or repair; "
                               f"`trajscope rm {run_id}` (with the same --root) removes what is left")
        return report
    try:
        group = root.read_group_metadata(run_id)
    except PathOutsideRoot:
        return report  # reported with the links
    except MalformedRun as err:  # not JSON, or a trajscope attribute of the wrong type
        report.problems.append(str(err))
        return report
    attrs = group.get("attributes") or {}
    status = report.status = str(attrs.get("status", "unknown"))
    if root.is_foreign(run_id, attrs):  # someone else's Zarr group: nothing of a run to check, nothing repaired
        report.problems.append(f"{root.run_url(run_id)} is not a trajscope run (a Zarr group without a run's "
                               "attributes): left as it is")
        return report
    try:
        check_format(run_id, attrs)
    except UserError as newer:  # a later trajscope's run: neither checked nor repaired by this one
        report.problems.append(f"{newer}; left as it is")
        return report
    report.committed = committed = int(attrs.get(COMMITTED, 0) or 0)
    creating = never_fully_created(attrs)  # (also one an older trajscope left without a status: found by a review,
    # whose repair shrank every array as if its finish had stopped)
    alive = (status == "running" or creating) and (_writer_alive(root, run_id) if repair else writer_holds(root, run_id))
    if creating:
        if alive:
            report.problems.append("the run is being created right now; check again when its producer has started")
        elif repair:
            return _repair_creating(root, run_id, report)
        else:
            report.problems.append("the run was never fully created (its producer died while creating it): "
                                   "--repair removes it, or `trajscope produce CONFIG --name` replaces it")
        return report
    if status not in STATUSES:
        report.problems.append(f"status {status!r} is not one of {', '.join(STATUSES)}")
    for key in ("time_variables", "chunk_steps", "capacity") + (() if "schema" in attrs else ("config",)):
        if key not in attrs:
            report.problems.append(f"root attribute {key!r} is missing")
    capacity = int(attrs.get("capacity", 0) or 0)
    if not 0 <= committed <= capacity:
        report.problems.append(f"committed_steps {committed} is outside 0..capacity {capacity}")
    arrays = _read_arrays(root, run_id, report)
    for name in run_attr(attrs, "time_variables", []):  # (JSON text in a copy xarray wrote: `export`)
        if name not in arrays:
            report.problems.append(f"time-varying array {name} is missing")
    unfinished = _check_shapes(group, attrs, arrays, committed, status, alive, report)
    if unfinished and repair:
        _repair_unfinished(root, run_id, attrs, committed, status, unfinished, report)
        group = root.read_group_metadata(run_id)
        arrays = _read_arrays(root, run_id, report)
    if root.is_local and not alive:
        _check_temporaries(root, run_id, repair, report)
    _verify_chunks(root, run_id, arrays, committed, report)
    return report


def _check_temporaries(root: StoreRoot, run_id: str, repair: bool, report: FsckReport) -> None:
    """Temporary files a writer killed in mid-write left (no writer is running): reported; removed by repair."""
    run_dir = root.run_url(run_id)
    found = stale_temporaries(run_dir)
    if not found:
        return
    problem = (f"{len(found)} temporary file(s) left by a writer stopped in mid-write, e.g. "
               f"{os.path.relpath(found[0], run_dir)}: --repair or `trajscope resume` removes them")
    if not repair:
        report.problems.append(problem)
        return
    try:
        with WriterLock(root, run_id, purpose="repairing"):
            remove_stale_temporaries(run_dir)
    except RunLocked as err:
        report.problems.append(f"{problem} (not repaired: {err})")
        return
    report.repaired.append(problem)


def _check_shapes(group: dict[str, Any], attrs: dict[str, Any], arrays: dict[str, dict[str, Any]], committed: int,
                  status: str, alive: bool, report: FsckReport) -> list[str]:
    """Shape problems; returns the unfinished-protocol problems that ``repair`` can finish."""
    unfinished = []
    sizes: dict[str, tuple[int, str]] = {}
    finished = status != "running"
    for name, meta in sorted(arrays.items()):
        dims = meta.get("dimension_names") or []
        shape = meta.get("shape") or []
        for dim, length in zip(dims, shape):
            if dim == STEP_DIM:
                continue
            if dim in sizes and sizes[dim][0] != length:
                report.problems.append(f"dimension {dim!r} is {length} long in {name} but {sizes[dim][0]} in "
                                       f"{sizes[dim][1]}")
            sizes.setdefault(dim, (length, name))
        if dims and dims[0] == STEP_DIM:
            if shape[0] < committed:
                report.problems.append(f"{name} holds {shape[0]} states, fewer than the {committed} committed")
            elif finished and shape[0] != committed:
                unfinished.append(f"{name} holds {shape[0]} states but the finished run committed {committed} "
                                  "(its finish stopped while shrinking)")
    if status == "running" and not alive:
        again = ("ModuleRecorder(..., resume=True) in its script" if is_module_run(attrs)
                 else "`trajscope resume`")
        unfinished.append(f"status is running but no writer holds the run (its producer died): {again} "
                          "continues it, --repair marks it interrupted")
    if finished and status in STATUSES:
        consolidated = (group.get("consolidated_metadata") or {}).get("metadata")
        if not consolidated:
            unfinished.append("the finished run has no consolidated metadata (its finish was stopped)")
        else:
            stale = [n for n, m in arrays.items() if (consolidated.get(n) or {}).get("shape") not in
                     (m.get("shape"), [committed] + list(m.get("shape", [])[1:]))]
            if stale:
                unfinished.append(f"consolidated metadata disagrees with the arrays {', '.join(sorted(stale))}")
    report.problems.extend(unfinished)
    return unfinished


def _repair_creating(root: StoreRoot, run_id: str, report: FsckReport) -> FsckReport:
    try:
        with WriterLock(root, run_id, purpose="repairing") as lock:
            root.delete(run_id)
            if lock.run_id == run_id:  # (a link's lock is the run it names, which stays)
                lock.remove_file()
    except RunLocked as err:
        report.problems.append(f"not repaired: {err}")
        return report
    report.repaired.append("removed the half-created run (nothing had been recorded in it)")
    report.status = "removed"
    return report


def _last_state(root: StoreRoot, run_id: str, committed: int) -> dict[str, Any]:
    """``last_step`` and ``final_loss`` (a number per state) of the last committed state, as a finished run has
    them (``ls`` showed no final loss for a run fsck had marked interrupted: found by a review); ``{}`` when
    they cannot be read."""
    if committed <= 0:
        return {}
    import zarr

    out: dict[str, Any] = {}
    try:
        group = zarr.open_group(root.zarr_store(run_id, read_only=True), mode="r", use_consolidated=False)
        arrays = {}
        for name in ("step", "loss"):  # opened by name, not listed: a listing warned of the store's own marker
            with contextlib.suppress(KeyError):  # files (`.all_chunks_stored`: found by a review)
                arrays[name] = group[name]
        if "step" in arrays:
            out["last_step"] = int(arrays["step"][committed - 1])
        if "loss" in arrays and arrays["loss"].ndim == 1:
            out["final_loss"] = float(arrays["loss"][committed - 1])  # (stored by set_finite_or_null)
    except Exception:  # noqa: BLE001 - a lost or corrupt chunk: fsck reports it; nothing more is set
        return {}
    return out


def _repair_unfinished(root: StoreRoot, run_id: str, attrs: dict[str, Any], committed: int, status: str,
                       unfinished: list[str], report: FsckReport) -> None:
    from trajscope.store.writer import _now, shrink_arrays, write_final_document

    try:
        lock = WriterLock(root, run_id, purpose="repairing").acquire()
    except RunLocked as err:
        report.problems.append(f"not repaired: {err}")
        return
    try:
        attrs = root.read_attrs(run_id)  # again, under the lock
        if attrs.get("status") == "running":
            # it ended at its last commit (the time its writer last wrote), not now: `ls` showed the time of the
            # repair as its duration (found by a review)
            attrs.update(status="interrupted", error=None, finished=attrs.get("updated") or _now(), updated=_now())
            set_finite_or_null(attrs, _last_state(root, run_id, int(attrs.get(COMMITTED, 0))))
            attrs.pop("writer", None)
        try:
            write_final_document(root, run_id, attrs)
        except (CorruptData, PathOutsideRoot) as err:  # an own array lost or leading out: nothing is finished
            report.problems.append(f"not repaired: {err}")
            return
        shrink_arrays(root, run_id, int(attrs.get(COMMITTED, 0)))
    finally:
        lock.release()
    for problem in unfinished:
        report.problems.remove(problem)
        report.repaired.append(problem)
    report.status = str(attrs.get("status"))

