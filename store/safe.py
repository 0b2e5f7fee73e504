"""Reads that never leave the store root (local roots); for writes see :mod:`trajscope.store.nolinks`.

Rule: a reader opens a file only when its resolved path lies under the store root's resolved path.
:func:`open_inside` opens a path one component at a time from a descriptor of the root, each with
``O_NOFOLLOW``; only when it meets a link does it resolve the path (``os.path.realpath``), check that it
stays under the root and walk the resolved path the same way, so a link swapped in between the check and
the open is refused too. Links that stay inside the root are followed; anything that leaves it raises
:class:`~trajscope.store.errors.PathOutsideRoot` naming the key. Only regular files are read.

:class:`RootedLocalStore` is zarr's ``LocalStore`` with every read, listing and size going through these
checks, so ``xr.open_zarr`` through :func:`trajscope.open_run` cannot be led outside the root either.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import stat
import uuid
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Iterable

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore

from trajscope.store.errors import PathOutsideRoot
from trajscope.store.nolinks import create_new_file, open_real_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def zarr_store_holding(folder: str | os.PathLike) -> Path | None:
    """The outermost of the local folder ``folder`` and its parents that is a Zarr v3 node, or ``None``: a folder
    ``*.zarr`` holding a ``zarr.json`` (a run, an export, whatever that file holds), or any folder whose
    ``zarr.json`` is a Zarr v3 group or array document (an array of a run; a stray ``zarr.json`` of other content
    makes no store: found by a review). What is written there is taken for part of that store, and deleted with
    it."""
    found = None
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        document = candidate / "zarr.json"
        try:
            present = document.is_file()
        except OSError:  # (a folder this user may not search: no store seen there)
            present = False
        if present and (candidate.name.endswith(".zarr") or _is_zarr_node(document)):
            found = candidate
    return found


def _is_zarr_node(document: Path) -> bool:
    """Whether the file ``document`` is a Zarr v3 node's metadata (read whole, up to 64 MiB)."""
    try:
        with open(document, "rb") as handle:
            metadata = json.loads(handle.read(64 * 2**20))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and metadata.get("zarr_format") == 3 and \
        metadata.get("node_type") in ("group", "array")


def is_inside(base: str, path: str) -> bool:
    """True when the resolved ``path`` is ``base`` or lies under it (``base`` already resolved)."""
    real = os.path.realpath(path)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def resolve_inside(base: str, path: str, what: str) -> str:
    """The resolved ``path``; :class:`PathOutsideRoot` naming ``what`` when it leaves ``base``."""
    real = os.path.realpath(path)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise PathOutsideRoot(f"{what} resolves outside the store root (a symbolic link out of it); it is not read")
    return real


class _LinkMet(Exception):
    """A component of the walked path is a symbolic link."""


def _walk(base: str, parts: tuple[str, ...]) -> int:
    """Open ``base/parts...`` one component at a time, each with ``O_NOFOLLOW`` (:class:`_LinkMet` on a link)."""
    fd = os.open(base, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                new = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    try:
                        link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                    except OSError:
                        link = False
                    if link:
                        raise _LinkMet(part) from None
                raise
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_inside(base: str, path: str, what: str) -> int:
    """A read-only descriptor of the regular file ``path``, never opened through a link that leaves ``base``.

    Fast path: the path is opened component by component from ``base`` with ``O_NOFOLLOW`` (no link met:
    done). When a component is a link, the path is resolved and must lie under ``base``
    (:class:`PathOutsideRoot` otherwise); the resolved path is then walked the same way, so a link swapped
    in meanwhile is refused too. :class:`FileNotFoundError` when there is no such file,
    :class:`IsADirectoryError` when it is not a regular file (a FIFO or device is never read).
    """
    rel = os.path.relpath(path, base)
    parts = () if rel == "." else Path(rel).parts
    fd = None
    if ".." not in parts:
        try:
            fd = _walk(base, parts)
        except _LinkMet:
            fd = None
    if fd is None:
        real = resolve_inside(base, path, what)
        try:
            fd = _walk(base, Path(os.path.relpath(real, base)).parts if real != base else ())
        except _LinkMet:
            raise PathOutsideRoot(f"{what} changed into a link while it was opened; it is not read") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(path)
    return fd


def read_inside(base: str, path: str, what: str, byte_range: ByteRequest | None = None) -> bytes:
    """The bytes of ``path`` (or a range of them) read through :func:`open_inside`."""
    fd = open_inside(base, path, what)
    with io.FileIO(fd, "rb", closefd=True) as handle:
        if byte_range is None:
            return handle.readall()
        size = handle.seek(0, io.SEEK_END)
        if isinstance(byte_range, RangeByteRequest):
            handle.seek(byte_range.start)
            return handle.read(max(byte_range.end - byte_range.start, 0))
        if isinstance(byte_range, OffsetByteRequest):
            handle.seek(byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            handle.seek(max(0, size - byte_range.suffix))
        else:
            raise TypeError(f"unexpected byte range {byte_range!r}")
        return handle.read()


def tree_size(base: str, path: str) -> int:
    """Bytes of the regular files under ``path``, never following a link (so nothing outside is counted)."""
    if not is_inside(base, path):
        return 0
    total = 0
    for directory, dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(directory, name)):  # lstat: a link's own size is not data
                total += st.st_size
    return total


class RootedLocalStore(LocalStore):
    """zarr's ``LocalStore`` for one run, whose reads never leave the store root ``base``.

    Every ``get`` resolves the key and opens it through :func:`open_inside`; listings skip entries that
    resolve outside. Writes are zarr's (a temporary file renamed over the key, which replaces a link
    rather than writing through it), made relative to a descriptor of the key's folder walked without
    following a link (:func:`~trajscope.store.nolinks.open_real_dir`: a link planted at ``W/``, even one
    swapped in while the write runs, would have an array's metadata written wherever it points).
    """

    def __init__(self, root: Path | str, *, base: str, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.base = base

    def with_read_only(self, read_only: bool = False) -> "RootedLocalStore":
        return type(self)(self.root, base=self.base, read_only=read_only)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootedLocalStore) and self.root == other.root and self.base == other.base

    def _read(self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        try:
            data = read_inside(self.base, os.path.join(self.root, key), f"key {key!r} of {self.root.name}", byte_range)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return prototype.buffer.from_bytes(data)

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None,
                 byte_range: ByteRequest | None = None) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype, byte_range)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(self._read, key, prototype, byte_range)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await asyncio.to_thread(self._read, key, prototype, rng) for key, rng in key_ranges]

    def _put(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        """zarr's ``_put`` (a temporary ``<stem>.<uuid hex>.partial`` file renamed over the key; with
        ``exclusive``, linked to it, so an existing key raises ``FileExistsError``), made relative to a
        descriptor of the key's folder, walked without following a link
        (:func:`~trajscope.store.nolinks.open_real_dir`): nothing is resolved by path after the walk."""
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"RootedLocalStore.set(): value must be a Buffer, not {type(value).__name__}")
        *folders, name = key.split("/")
        dir_fd = open_real_dir(str(self.root), folders, f"key {key!r} of {self.root.name}")
        try:
            tmp = PurePosixPath(name).with_suffix(f".{uuid.uuid4().hex}.partial").name
            fd = create_new_file(tmp, dir_fd)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(value.as_buffer_like())
                if exclusive:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                    os.unlink(tmp, dir_fd=dir_fd)
                else:
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        finally:
            os.close(dir_fd)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._put, key, value, exclusive)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._put(key, value)

    async def exists(self, key: str) -> bool:
        path = os.path.join(self.root, key)
        return await asyncio.to_thread(lambda: os.path.isfile(path) and is_inside(self.base, path))

    async def getsize(self, key: str) -> int:
        path = resolve_inside(self.base, os.path.join(self.root, key), f"key {key!r} of {self.root.name}")
        return os.path.getsize(path)

    def _inside(self, path: Path) -> bool:
        return is_inside(self.base, str(path))

    async def list(self) -> AsyncIterator[str]:
        async for key in self.list_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        start = Path(self.root) / prefix.rstrip("/")
        if not self._inside(start):
            return
        for directory, dirs, files in os.walk(start, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
            for name in files:
                path = Path(directory) / name
                if self._inside(path):
                    yield path.relative_to(self.root).as_posix()

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = Path(self.root) / prefix
        if not self._inside(base):
            return
        try:
            entries = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in entries:
            if self._inside(base / name):
                yield name
