"""Chunk bytes and chunk files: the store's own encoder for its codec pipeline, and where the bytes go.

The store writes time chunks itself instead of going through ``zarr.Array.__setitem__``: the bytes are
exactly what zarr-python's codec pipeline of the array produces (``tests/store/test_chunkio.py`` proves
it for every dtype and codec the store uses, including a partial last chunk), so plain zarr and
``xr.open_zarr`` read them as if zarr had written them.

Encoding of one chunk (``c`` = the chunk's values, padded to the full chunk shape with the array's
fill value, as zarr pads edge and partially written chunks)::

    payload = bytes(c as little-endian, C order)        # BytesCodec(endian="little")
    payload = zstd(payload, level)                      # ZstdCodec, only with compressor "zstd"
    stored  = payload ‖ uint32_le(crc32c(payload))      # Crc32cCodec

The checksum is computed with the ``crc32c`` package, which releases the GIL (``bench/crc32c_gil.py``; google-crc32c, which
zarr's codec uses, holds it: a training thread waited behind every checksum); zstd (numcodecs) and file
writes release it too, so several chunks are encoded and written at once by a thread pool
(:mod:`trajscope.store.hotpath`) while the training thread keeps running.

A block may be given as :class:`StateRows` (one array per state, as the recorder holds them when it
keeps states by reference): the rows are written one after the other with ``writev`` and the checksum
is chained over them, so the file holds exactly the bytes of the stacked chunk and nothing is copied.

Sinks put the bytes of one key: :class:`LocalSink` writes a temporary file in the key's directory and
renames it over the key (a reader sees the old or the new chunk, never a torn one); the directory is
walked from the run's without following a link (:mod:`trajscope.store.nolinks`); with durability
``fsync`` it fsyncs the temporary file before the rename and the directory (and the parent of every
directory not yet fsynced, up to the run's root) after it. With ``io="direct"`` it writes a large chunk's bytes with direct I/O
(``O_DIRECT``: from the buffer to the device, no copy into the page cache; see :class:`LocalSink`).
:class:`FsspecSink` does one ``pipe_file`` (a single PUT on
object stores, which is atomic and durable once acknowledged; ``fsync`` does not apply), of one ``bytes``
object made by :func:`joined`, which copies the parts without holding the GIL.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import sys
import threading
from typing import Sequence

import crc32c
import numpy as np
import numpy.typing as npt

from trajscope.store import faults
from trajscope.store.layout import TEMPORARY_PREFIX
from trajscope.store.nolinks import create_new_file, open_real_dir

#: durability levels: ``process`` survives a killed process, ``fsync`` also a power loss or kernel crash
DURABILITY_LEVELS = ("process", "fsync")
#: how a local root's chunk files are written: through the page cache, or with direct I/O (:class:`LocalSink`)
WRITE_IO_MODES = ("buffered", "direct")
#: what a direct write must be aligned to: the buffer's address, the file offset and the length (4096 covers
#: devices of 512- and 4096-byte logical blocks and the memory alignment Linux asks of them)
DIRECT_ALIGNMENT = 4096
#: a chunk's first part shorter than this is written through the page cache even with ``io="direct"``: the
#: direct share of a small file is small, and a direct write waits for the device (a choice, not a measurement)
DIRECT_MIN_BYTES = 1 << 18
#: zarr-python 3's ``LocalStore`` (array metadata, the static arrays' chunks) writes ``<key stem>.<uuid hex>.partial``
ZARR_TEMPORARY = re.compile(r".+\.[0-9a-f]{32}\.partial")


class StateRows:
    """The rows of a block given as one array per state instead of one stacked array.

    ``rows[i]`` is the value of state ``start + i`` (any array-like of the per-state shape). ``np.asarray``
    stacks them (a copy); :meth:`ChunkEncoder.encode` writes them without one.
    """

    def __init__(self, rows: Sequence) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ARG002 - always a new array
        stacked = np.stack([np.asarray(row) for row in self.rows])  # mixed dtypes promote
        return stacked if dtype is None else stacked.astype(dtype, copy=False)


def checksum(parts: Sequence) -> bytes:
    """``le32(crc32c(parts[0] ‖ parts[1] ‖ …))``, chained over the parts (no concatenation)."""
    value = 0
    for part in parts:
        value = crc32c.crc32c(part, value)
    return int(value).to_bytes(4, "little")


def chunk_ok(stored: bytes | memoryview) -> bool:
    """Whether a stored chunk's last 4 bytes are ``le32(crc32c(rest))``."""
    if len(stored) < 4:
        return False
    return checksum([memoryview(stored)[:-4]]) == bytes(stored[-4:])


class ChunkEncoder:
    """Encodes chunks of one zarr v3 array exactly as its codec pipeline would.

    Parameters
    ----------
    array
        An open ``zarr.Array`` (v3) whose codecs are ``bytes`` (little-endian), optionally ``zstd``,
        then ``crc32c`` — the pipelines of :func:`trajscope.store.layout.codecs_for`. Any other pipeline
        is refused (``ValueError``), so the store never writes bytes zarr would not.
    """

    def __init__(self, array) -> None:
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        codecs = list(array.metadata.codecs)
        names = [type(c).__name__ for c in codecs]
        if len(codecs) < 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[-1], Crc32cCodec):
            raise ValueError(f"array {array.name}: codec pipeline {names} is not bytes[+zstd]+crc32c")
        middle = codecs[1:-1]
        if codecs[0].endian is not None and codecs[0].endian.value != "little":
            raise ValueError(f"array {array.name}: big-endian storage is not supported by the hot write path")
        self.zstd = None
        if middle:
            if len(middle) != 1 or not isinstance(middle[0], ZstdCodec) or middle[0].checksum:
                raise ValueError(f"array {array.name}: codec pipeline {names} is not bytes[+zstd]+crc32c")
            from numcodecs import Zstd

            self.zstd = Zstd(level=middle[0].level, checksum=False)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.chunk_shape: tuple[int, ...] = tuple(array.metadata.chunk_grid.chunk_shape)
        self.fill_value = array.fill_value
        self._encode_key = array.metadata.encode_chunk_key
        self._prefix = f"{array.path}/" if array.path else ""

    def key(self, coords: Sequence[int]) -> str:
        """The key of chunk ``coords`` under the run's group (``W/c/i/j/k`` with zarr's default encoding)."""
        return self._prefix + self._encode_key(tuple(int(c) for c in coords))

    def full(self) -> np.ndarray:
        """A chunk-shaped array of the fill value."""
        return np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)

    def pad(self, values: np.ndarray) -> np.ndarray:
        """``values`` (a corner of a chunk) as a full, C-contiguous, little-endian chunk."""
        values = np.asarray(values)
        if values.shape == self.chunk_shape:
            return np.ascontiguousarray(values, dtype=self.dtype)
        chunk = self.full()
        chunk[tuple(slice(0, n) for n in values.shape)] = values
        return chunk

    def encode(self, values: np.ndarray | StateRows) -> list:
        """The stored bytes of one chunk, as a list of buffers to be written one after the other.

        No copy is made when ``values`` already is a full C-contiguous little-endian chunk (the
        recorder's host buffers are): the payload is a view of it and only the 4 checksum bytes are new.
        Nor when it is :class:`StateRows` of a chunk that spans the whole state (without zstd): the
        payload is the rows' own memory, then the fill value for the rows a partial chunk lacks.
        """
        if isinstance(values, StateRows):
            if self.zstd is None and len(values) <= self.chunk_shape[0]:
                payload = [self._row_bytes(row) for row in values.rows]
                if len(values) < self.chunk_shape[0]:
                    payload.append(self.full()[len(values):].reshape(-1).view(np.uint8))
                return payload + [checksum(payload)]
            values = np.asarray(values)
        chunk = self.pad(values)
        payload = chunk.reshape(-1).view(np.uint8)
        if self.zstd is not None:
            payload = self.zstd.encode(payload)
        return [payload, checksum([payload])]

    def _row_bytes(self, row) -> np.ndarray:
        """One state's bytes as stored (a view when the row already is C-contiguous little-endian)."""
        row, shape = np.asarray(row), self.chunk_shape[1:]
        if row.shape != shape:
            if not (row.size == 1 and math.prod(shape) == 1):
                raise ValueError(f"a state of shape {row.shape} in chunks of states of shape {shape}")
            row = row.reshape(shape)
        return np.ascontiguousarray(row, dtype=self.dtype).reshape(-1).view(np.uint8)


#: the folder levels of a chunk key whose descriptor a :class:`LocalSink` keeps (``NAME/c``: an array's chunks)
_KEPT_DEPTH = 2


class LocalSink:
    """Puts chunk files under a local run directory: temporary file + rename, fsynced on request.

    Parameters
    ----------
    base
        The run's directory.
    durability
        One of :data:`DURABILITY_LEVELS`.
    io
        ``buffered`` (default): ``writev`` through the page cache. ``direct``: a chunk whose first part is a
        buffer aligned to :data:`DIRECT_ALIGNMENT` and at least :data:`DIRECT_MIN_BYTES` long (the recorder's
        chunk buffers, :func:`aligned_empty`) has the aligned prefix of that part written with ``O_DIRECT`` —
        the device reads it from the buffer, the kernel copies nothing into the page cache — and the rest
        (under 4 kB of it, and the checksum) buffered, into the same file. The bytes are the same either way.
        Anything else is written buffered; so is everything once the filesystem refuses direct I/O
        (:data:`DIRECT_IO_REFUSED`: some filesystems do not take it).
    """

    def __init__(self, base: str, durability: str = "process", io: str = "buffered") -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"unknown durability {durability!r}: use one of {', '.join(DURABILITY_LEVELS)}")
        if io not in WRITE_IO_MODES:
            raise ValueError(f"unknown io {io!r}: use one of {', '.join(WRITE_IO_MODES)}")
        self.base = os.path.abspath(base)
        self.fsync = durability == "fsync"
        #: direct I/O still tried (False once the filesystem refused it; never where the OS has no ``O_DIRECT``)
        self.direct = io == "direct" and hasattr(os, "O_DIRECT")
        #: chunk files written with direct I/O, and buffered (what the tests check beside the kernel's answer)
        self.direct_files = self.buffered_files = 0
        self._durable_dirs: set[str] = set()  # (durability fsync) folders whose entries are fsynced
        self._kept: dict[tuple[str, ...], int] = {}  # descriptors of the arrays' chunk folders (``NAME/c``)
        self._lock = threading.Lock()

    def put(self, key: str, parts: Sequence) -> None:
        """Replace ``key`` atomically with the concatenation of ``parts``.

        The key's folder is opened from the run's without following a link (:mod:`trajscope.store.nolinks`:
        a link planted in the run is refused, never written through), and the temporary file is created and
        renamed relative to it."""
        *folders, name = key.split("/")
        head, rest = folders[:_KEPT_DEPTH], folders[_KEPT_DEPTH:]
        durable = self._durable_dirs if self.fsync else None
        kept = self._kept_folder(tuple(head), key, durable)
        dir_fd = open_real_dir(self.base, rest, f"chunk {key!r}", durable=durable, start=(kept, head)) if rest else kept
        try:
            self._put_in(dir_fd, key, name, parts)
        finally:
            if dir_fd != kept:
                os.close(dir_fd)

    def _kept_folder(self, head: tuple[str, ...], key: str, durable: set | None) -> int:
        """The descriptor of ``base/head...`` (an array's ``NAME/c``), walked once and kept: each chunk's own
        folders are walked from it, two system calls a level fewer (each a hand-over of the interpreter lock
        on a write thread)."""
        fd = self._kept.get(head)
        if fd is None:
            fd = open_real_dir(self.base, head, f"chunk {key!r}", durable=durable)
            with self._lock:
                if head in self._kept:  # walked by another write thread meanwhile
                    os.close(fd)
                    fd = self._kept[head]
                else:
                    self._kept[head] = fd
        return fd

    def close(self) -> None:
        """Close the folders' descriptors kept by :meth:`put` (after the last write; a later put walks again).
        A sink dropped without it (a writer stopped by an error) closes them when collected."""
        with self._lock:
            kept = list(self._kept.values())
            self._kept.clear()
        for fd in kept:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _put_in(self, dir_fd: int, key: str, name: str, parts: Sequence) -> None:
        tmp = f"{TEMPORARY_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}"
        fd = create_new_file(tmp, dir_fd)
        try:
            try:
                size = direct_bytes(parts) if self.direct else 0
                direct = bool(size) and write_direct(fd, parts, size)
                if not direct:
                    if size:  # the filesystem refused it: buffered from now on
                        self.direct = False
                    _write_all(fd, parts)
                with self._lock:  # (the write threads count together)
                    if direct:
                        self.direct_files += 1
                    else:
                        self.buffered_files += 1
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            faults.checkpoint("write.renaming", key)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:  # e.g. a full disk: no partial file is left behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if self.fsync:
            os.fsync(dir_fd)

    def durable_tree(self) -> None:
        """fsync every file and directory under the run (what ``create`` wrote: metadata, static arrays)."""
        if not self.fsync:
            return
        for directory, _, files in os.walk(self.base):
            for name in files:
                if not name.startswith(TEMPORARY_PREFIX):
                    _fsync_file(os.path.join(directory, name))
            fsync_dir(directory)

    def durable_document(self, key: str) -> None:
        """fsync a document written by someone else (the root attributes) and its directory."""
        if not self.fsync:
            return
        path = os.path.join(self.base, key)
        _fsync_file(path)
        fsync_dir(os.path.dirname(path))


#: how many times a fenced chunk write (:class:`FsspecSink`) is tried against objects replaced under it
FENCED_WRITE_ATTEMPTS = 5
#: the object-store error codes of a refused conditional write (``412``; ``409``: another conditional write of
#: the key was in progress)
_CONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def refused_by_condition(exc: BaseException) -> bool:
    """Whether ``exc`` is an object store's refusal of a conditional write (``If-None-Match: *`` finding the
    object, which s3fs raises as ``FileExistsError``; ``If-Match`` finding another object), not a failure."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in _CONDITION_CODES


class FsspecSink:
    """Puts chunk objects through an fsspec filesystem (one ``pipe_file`` per key).

    ``fenced_by`` (object stores with ETags, where a writer holds a lease, not a lock): a callable that raises
    when this writer no longer holds the run (:meth:`~trajscope.store.locks.WriterLock.confirm`). Every PUT
    then names the object it replaces: ``If-Match`` the ETag of this writer's last write of the key, or
    ``If-None-Match: *`` for a key it has not written. A PUT of a writer that was taken over after a stall
    (sent before the takeover, retried by the client, landing late) that arrives after the new writer wrote
    that key finds the new writer's object and is refused; one that arrives before is replaced when the new
    writer writes the key (its own first write of it is refused, and goes over the object found). A refusal
    makes the writer read the key's ETag, confirm it still holds the run, and write again over exactly that
    object: what a resumed run rewrites (a partial chunk an earlier writer left), and this writer's own PUT
    retried after its first attempt landed. A store answering ``NotImplemented`` to conditions is written
    without them from then on. (One ETag is kept per key written, ~100 bytes each.)
    """

    def __init__(self, fs, base: str, *, fenced_by=None) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.fenced_by = fenced_by
        self._etags: dict[str, str] = {}  # key -> ETag of this writer's last write of it (fenced)

    def put(self, key: str, parts: Sequence) -> None:
        """Write ``key`` in one request (fenced: one conditional request, more only when it is refused)."""
        path, data = f"{self.base}/{key}", joined(parts)
        if self.fenced_by is None:
            self.fs.pipe_file(path, data)
            return
        expected = self._etags.get(key)
        for _ in range(FENCED_WRITE_ATTEMPTS):
            try:
                result = self.fs.pipe_file(path, data, **({"IfMatch": expected} if expected else {"mode": "create"}))
            except OSError as exc:
                if exc.errno == errno.ENOSYS:  # the store takes no conditions: unfenced from now on
                    self.fenced_by = None
                    self.fs.pipe_file(path, data)
                    return
                if not (refused_by_condition(exc) or expected and isinstance(exc, FileNotFoundError)):
                    raise  # (AWS answers If-Match on a key gone since with 404 NoSuchKey: a refusal too)
                expected = self._stored_etag(path)  # first the object there now,
                self.fenced_by()  # then this writer still holds the run: the next write replaces that object
                continue
            etag = result.get("ETag") if isinstance(result, dict) else None
            self._etags[key] = etag if etag is not None else self._stored_etag(path)
            return
        raise OSError(errno.EAGAIN, f"chunk {key} was replaced under this writer {FENCED_WRITE_ATTEMPTS} times "
                                    "while it wrote it (another writer of the run?)")

    def _stored_etag(self, path: str) -> str | None:
        """The ETag of the object at ``path`` now (``None`` when there is none), asked of the store."""
        self.fs.invalidate_cache(path)
        try:
            return self.fs.info(path).get("ETag")
        except FileNotFoundError:
            return None

    def durable_tree(self) -> None:
        """Nothing to do: an object store acknowledges a PUT once it is stored."""

    def durable_document(self, key: str) -> None:
        """Nothing to do: an object store acknowledges a PUT once it is stored."""


def direct_bytes(parts: Sequence) -> int:
    """How many bytes of ``parts`` a direct write takes: the largest aligned prefix of the first part when
    that is a C-contiguous array starting on :data:`DIRECT_ALIGNMENT` and the prefix is at least
    :data:`DIRECT_MIN_BYTES`; else 0."""
    first = parts[0] if len(parts) else None
    if not isinstance(first, np.ndarray) or not first.flags.c_contiguous or first.ctypes.data % DIRECT_ALIGNMENT:
        return 0
    size = first.nbytes // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT
    return size if size >= DIRECT_MIN_BYTES else 0


#: what a filesystem that does not take direct I/O answers (``EINVAL``; some FUSE and virtual filesystems
#: ``EOPNOTSUPP``, which is ``ENOTSUP`` on Linux)
DIRECT_IO_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def write_direct(fd: int, parts: Sequence, size: int) -> bool:
    """Write ``parts`` into the new, empty file ``fd``: the first ``size`` bytes (:func:`direct_bytes`) with
    ``O_DIRECT`` (the device reads them from the buffer; nothing is copied into the page cache), the rest
    through the page cache, after them. Returns False, the file left empty, where the filesystem refuses
    direct I/O (:data:`DIRECT_IO_REFUSED`); other errors (a full disk) are raised."""
    import fcntl  # (POSIX only: here, not at the top, so the store imports everywhere)

    first = memoryview(parts[0]).cast("B")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    written = 0
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        while written < size:
            n = os.pwrite(fd, first[written:size], written)
            if n <= 0:
                raise OSError(errno.EIO, f"a direct write wrote {n} bytes")
            written += n
            if n % DIRECT_ALIGNMENT:  # a short write off the alignment: the rest goes through the page cache
                break
    except OSError as exc:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        if exc.errno not in DIRECT_IO_REFUSED:
            raise
        os.ftruncate(fd, 0)
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    os.lseek(fd, written, os.SEEK_SET)
    _write_all(fd, [first[written:], *parts[1:]])
    return True


#: local disk filesystems whose direct I/O goes from the buffer to the device (``record.io: auto`` writes directly
#: only there: on tmpfs a direct write is the same copy a buffered one makes, on NFS or FUSE each direct write
#: waits for a server; btrfs, since Linux 6.14, turns a direct write to a checksummed file (its default) into a
#: buffered one, and f2fs does in several of its modes; an overlay or an unknown filesystem is left to the
#: page cache)
DIRECT_IO_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs"})


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``tmpfs``...), from ``/proc/self/mountinfo``
    (the mount point that is the longest prefix of the resolved path); ``None`` where that is not readable."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, found = -1, None
    for line in lines:  # in mount order: of two mounts on one point, the later one hides the earlier
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), line.split(" - ", 1)[1].split()[0]
    return found


#: how the kernel writes a space, tab, newline or backslash in a mount point (``\040``: octal)
_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")


def aligned_empty(shape: Sequence[int], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of :data:`DIRECT_ALIGNMENT`
    (what a direct write of its bytes needs; ``np.empty`` aligns to 64 bytes at most)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + DIRECT_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % DIRECT_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(tuple(shape))


#: :func:`joined` makes a smaller object with ``b"".join`` (a short copy, not worth a ctypes call per part;
#: a choice, not a measured threshold)
JOIN_HOLDING_GIL_BELOW = 1 << 16

_new_bytes = None  # CPython's PyBytes_FromStringAndSize through ctypes, once looked up (False: not available)


def joined(parts: Sequence) -> bytes:
    """The concatenation of ``parts`` (C-contiguous buffers) as one new ``bytes`` object.

    An fsspec filesystem takes a chunk as one ``bytes`` (``memory://`` keeps it as it is, without another
    copy). ``b"".join`` makes it while holding the GIL, page faults of the fresh memory included, so the
    write threads took turns and the training thread waited behind them. Here, on CPython, the ``bytes``
    object is allocated uninitialised (``PyBytes_FromStringAndSize(NULL, n)``, as C code builds one) and
    filled with ``ctypes.memmove``, which releases the GIL; nothing else can see the object before it is
    full. Elsewhere it is ``b"".join``. BENCHMARKS.md, "Recording ceiling", has the rates on ``memory://``.
    """
    global _new_bytes
    views = [memoryview(p).cast("B") for p in parts]
    if _new_bytes is None:
        _new_bytes = False
        if sys.implementation.name == "cpython":  # elsewhere a c_char_p of a bytes object may be a copy
            import ctypes

            # a private prototype: the shared ctypes.pythonapi function object is left as it is
            prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)
            _new_bytes = (prototype(("PyBytes_FromStringAndSize", ctypes.pythonapi)), ctypes)
    total = sum(len(view) for view in views)
    if not _new_bytes or total < JOIN_HOLDING_GIL_BELOW:
        return b"".join(views)
    new, ctypes = _new_bytes
    out = new(None, total)
    address = ctypes.cast(ctypes.c_char_p(out), ctypes.c_void_p).value
    for view in views:
        if len(view):
            source = np.frombuffer(view, np.uint8).__array_interface__["data"][0]
            ctypes.memmove(address, source, len(view))
            address += len(view)
    return out


def stale_temporaries(directory: str) -> list[str]:
    """The temporary files under a local run directory (links not followed): the store's own and zarr's.
    With no writer running they are what a writer killed in mid-write left: never renamed, never read, safe
    to remove under the lock."""
    found = []
    for current, _, files in os.walk(directory):
        found += [os.path.join(current, name) for name in files
                  if name.startswith(TEMPORARY_PREFIX) or ZARR_TEMPORARY.fullmatch(name)]
    return sorted(found)


def remove_stale_temporaries(directory: str) -> int:
    """Remove :func:`stale_temporaries` (call it holding the run's writer lock); returns how many."""
    found = stale_temporaries(directory)
    for path in found:
        _unlink_quietly(path)
    return len(found)


def fsync_dir(directory: str) -> None:
    """fsync a directory, so the entries created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: most buffers one ``writev`` call takes (``IOV_MAX`` on Linux)
_IOV_MAX = 1024


def _write_all(fd: int, parts: Sequence) -> None:
    views = [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]
    first = 0  # views[first:] remain to be written
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        if written <= 0:  # no progress (never seen; a loop that retried would never end)
            raise OSError(errno.EIO, f"a write wrote {written} bytes")
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if first < len(views) and written:
            views[first] = views[first][written:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
