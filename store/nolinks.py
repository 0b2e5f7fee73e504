"""Writes that never go through a symbolic link below a local run's folder (or the root's ``.locks`` folder).

Rule: a writer creates and replaces files only in real folders. A folder below the run's own (``W/c/135``)
or the lock folder is opened one component at a time from a descriptor of its base, each with
``O_NOFOLLOW``, made where it is missing, and the file is then created in it relative to that descriptor,
also with ``O_NOFOLLOW``. So a link planted in a run (by anyone who may write the root's folders) can lead
a writer neither outside the store root nor into another run: the write is refused with
:class:`~trajscope.store.errors.PathOutsideRoot` naming the link. For chunk files and lock files a link
swapped in between the check and the write is refused the same way (nothing is resolved by path after the
walk), and so it is for zarr's own writes through a run's store (metadata, the static arrays' chunks:
:class:`~trajscope.store.safe.RootedLocalStore`).

Readers follow the rule of :mod:`trajscope.store.safe`: links that stay inside the root are read. The base
itself (a run's folder, the root) is opened as it is: the code that resolves a run checks that it lies
inside the root.
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

from trajscope.store.errors import PathOutsideRoot

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | CLOEXEC
#: a new file, never one already there, never through a link
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC


def _refused(base: str, parts: Sequence[str], what: str) -> PathOutsideRoot:
    where = os.path.join(base, *parts)
    return PathOutsideRoot(f"{what}: {where} is a symbolic link (or not a folder); trajscope never writes through "
                           "a link: remove it")


def open_real_dir(base: str, parts: Sequence[str], what: str, *, durable: set | None = None,
                  start: tuple[int, Sequence[str]] | None = None) -> int:
    """A descriptor of the folder ``base/parts...``, walked from ``base`` one component at a time without
    following a link, each missing one made.

    ``durable`` (durability ``fsync``): the folders known to survive a power loss (``base/...`` paths); the
    parent of any other folder walked is fsynced (its entry lives there), whoever made it, and it is added.
    ``start = (fd, walked)``: begin at ``fd``, a descriptor of ``base/walked...`` walked so before (left open;
    ``parts`` go on from there, at least one). Raises :class:`PathOutsideRoot` (``what`` names the write) when a
    component is a link or not a folder. The caller closes the descriptor.
    """
    first, walked = start if start is not None else (None, ())
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC) if first is None else first
    parts = [*walked, *parts]
    i = len(walked)
    try:
        for i in range(len(walked), len(parts)):
            part = parts[i]
            try:
                new = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:  # made meanwhile by another write thread (or planted: checked below)
                    pass
                try:
                    new = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refused(base, parts[: i + 1], what) from None
                    raise
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refused(base, parts[: i + 1], what) from None
                raise
            if durable is not None:
                path = "/".join(parts[: i + 1])
                if path not in durable:
                    try:
                        os.fsync(fd)
                    except BaseException:
                        os.close(new)
                        raise
                    durable.add(path)
            if fd != first:
                os.close(fd)
            fd = new
        return fd
    except OSError as err:
        if fd != first:
            os.close(fd)
        if i < len(parts) and err.filename == parts[i]:  # (made or opened relative to its folder, the error named
            # the component alone: a review found "read-only at .locks")
            raise type(err)(err.errno, err.strerror, os.path.join(base, *parts[: i + 1])) from None
        raise
    except BaseException:
        if fd != first:
            os.close(fd)
        raise


def create_new_file(name: str, dir_fd: int, mode: int = 0o666) -> int:
    """A descriptor of the new file ``name`` in the folder ``dir_fd``, opened for writing with ``O_EXCL`` and
    ``O_NOFOLLOW``: an entry of that name already there (a killed writer's temporary file whose pid came back,
    or a link planted under that name: ``O_EXCL`` refuses both) is removed first, a link itself, never what
    it points at."""
    try:
        return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)
    return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
