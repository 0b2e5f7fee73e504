"""Direct I/O (``record.io: direct``): the same bytes as zarr writes, and the page cache really left out.

Whether a file's pages sit in the page cache is asked of the kernel itself (``mincore`` on a read-only
mapping, which faults nothing in): a buffered write leaves the written pages there, a direct one does not.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from trajscope.store import chunkio
from trajscope.store.chunkio import (DIRECT_ALIGNMENT, DIRECT_MIN_BYTES, ChunkEncoder, LocalSink, aligned_empty,
                                     filesystem_type)
from trajscope.store.layout import codecs_for, fill_value_for

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="needs O_DIRECT (Linux)")


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file), asked of the kernel with ``mincore``."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
        address = np.frombuffer(mapped, np.uint8).ctypes.data  # a read-only mapping: numpy tells its address
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    return sum(b & 1 for b in vector), pages


def on_a_disk(path: Path) -> bool:
    """Whether ``path`` is on a filesystem whose direct writes skip the page cache (not tmpfs)."""
    return filesystem_type(str(path)) in chunkio.DIRECT_IO_FILESYSTEMS


def _array(path: Path, dtype: str, chunk: tuple[int, ...]):
    serializer, compressors = codecs_for("none")
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
    return group.create_array("a", shape=(3 * chunk[0], *chunk[1:]), chunks=chunk, dtype=dtype,
                              serializer=serializer, compressors=compressors, filters=None,
                              fill_value=fill_value_for(dtype))


# (dtype, chunk shape): an exact number of pages; a remainder of a few bytes; a chunk too small for direct I/O
CASES = [("float32", (4, 256, 64)), ("float64", (3, 301, 71)), ("int8", (6, 200, 260)), ("float32", (2, 10, 10))]


@pytest.mark.parametrize("dtype,chunk", CASES)
def test_direct_writes_are_zarrs_bytes_and_skip_the_page_cache(tmp_path, dtype, chunk):
    rng = np.random.default_rng(7)
    by_zarr = _array(tmp_path / "zarr.zarr", dtype, chunk)
    ours = _array(tmp_path / "ours.zarr", dtype, chunk)
    encoder = ChunkEncoder(ours)
    sink = LocalSink(str(tmp_path / "ours.zarr"), io="direct")
    data = rng.normal(size=(2 * chunk[0], *chunk[1:])) * 50
    data = data.astype(dtype)
    by_zarr[: 2 * chunk[0]] = data
    for t in range(2):
        block = aligned_empty(chunk, dtype)  # as the recorder's chunk buffers are
        block[...] = data[t * chunk[0] : (t + 1) * chunk[0]]
        assert block.ctypes.data % DIRECT_ALIGNMENT == 0
        sink.put(encoder.key((t, 0, 0)), encoder.encode(block))
    large = block.nbytes >= DIRECT_MIN_BYTES
    if on_a_disk(tmp_path) or not large:  # (elsewhere a filesystem may refuse O_DIRECT: then all go buffered)
        assert (sink.direct_files, sink.buffered_files) == ((2, 0) if large else (0, 2))
    assert sink.direct_files + sink.buffered_files == 2
    if large and on_a_disk(tmp_path):  # (before anything reads the files back into the page cache)
        # the kernel holds none of the directly written pages (the last one, written buffered, may be there);
        # a buffered write of the same bytes leaves them all in the page cache
        resident, pages = resident_pages(tmp_path / "ours.zarr" / encoder.key((1, 0, 0)))
        assert resident <= 1, (resident, pages)
        LocalSink(str(tmp_path / "ours.zarr")).put("copy", encoder.encode(block))
        assert resident_pages(tmp_path / "ours.zarr" / "copy") == (pages, pages)
    for t in range(2):
        key = encoder.key((t, 0, 0))
        assert (tmp_path / "ours.zarr" / key).read_bytes() == (tmp_path / "zarr.zarr" / key).read_bytes(), key
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "ours.zarr" / "a"), mode="r")
    np.testing.assert_array_equal(back[: 2 * chunk[0]], data)


def test_unaligned_memory_is_written_through_the_page_cache(tmp_path):
    array = _array(tmp_path / "a.zarr", "float32", (4, 256, 64))
    encoder, sink = ChunkEncoder(array), LocalSink(str(tmp_path / "a.zarr"), io="direct")
    raw = np.empty(4 * 256 * 64 * 4 + DIRECT_ALIGNMENT + 4, np.uint8)
    offset = (-raw.ctypes.data % DIRECT_ALIGNMENT) + 4  # 4 bytes off a page
    block = raw[offset : offset + 4 * 256 * 64 * 4].view(np.float32).reshape(4, 256, 64)
    block[...] = np.arange(block.size, dtype=np.float32).reshape(block.shape)
    sink.put(encoder.key((0, 0, 0)), encoder.encode(block))
    assert (sink.direct_files, sink.buffered_files) == (0, 1) and sink.direct  # still tried for the next chunk
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr" / "a"))[:4], block)


@pytest.mark.parametrize("answer", [errno.EINVAL, errno.EOPNOTSUPP], ids=["EINVAL", "EOPNOTSUPP"])
def test_a_filesystem_refusing_direct_io_gets_buffered_writes(tmp_path, monkeypatch, answer):
    """Some filesystems refuse ``O_DIRECT`` (``EINVAL``; some FUSE and virtual ones ``EOPNOTSUPP``); none
    here does, so the refusal is injected."""
    real = fcntl.fcntl

    def refusing(fd, command, arg=0):
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(answer, os.strerror(answer))
        return real(fd, command, arg)

    monkeypatch.setattr(fcntl, "fcntl", refusing)
    array = _array(tmp_path / "a.zarr", "float32", (4, 256, 64))
    encoder, sink = ChunkEncoder(array), LocalSink(str(tmp_path / "a.zarr"), io="direct")
    data = np.random.default_rng(1).normal(size=(8, 256, 64)).astype(np.float32)
    for t in range(2):
        block = aligned_empty((4, 256, 64), np.float32)
        block[...] = data[4 * t : 4 * t + 4]
        sink.put(encoder.key((t, 0, 0)), encoder.encode(block))
    assert not sink.direct and (sink.direct_files, sink.buffered_files) == (0, 2)
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr" / "a"))[:8], data)
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.name.startswith(".tmp-")]


def _chunks(tmp_path, count=2):
    """A float32 array of 4-state chunks of 256 x 64 (64 KiB a state), its encoder, a direct sink, and
    ``count`` chunks of data in page-aligned buffers."""
    array = _array(tmp_path / "a.zarr", "float32", (4, 256, 64))
    encoder, sink = ChunkEncoder(array), LocalSink(str(tmp_path / "a.zarr"), io="direct")
    data = np.random.default_rng(2).normal(size=(4 * count, 256, 64)).astype(np.float32)
    blocks = []
    for t in range(count):
        block = aligned_empty((4, 256, 64), np.float32)
        block[...] = data[4 * t : 4 * t + 4]
        blocks.append(block)
    return array, encoder, sink, data, blocks


def _assert_stored(tmp_path, array, encoder, data, blocks):
    """zarr reads ``data`` back, and every chunk file holds exactly zarr's own encoding of its block."""
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr" / "a"))[:len(data)], data)
    for t, block in enumerate(blocks):
        expected = b"".join(bytes(memoryview(p).cast("B")) for p in encoder.encode(block))
        assert (tmp_path / "a.zarr" / encoder.key((t, 0, 0))).read_bytes() == expected
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.name.startswith(".tmp-")]


def test_a_refusal_after_direct_bytes_were_written_rewrites_the_file_buffered(tmp_path, monkeypatch):
    """The filesystem takes the first direct write of a chunk and refuses the next (``EINVAL``): the file
    is emptied and written whole through the page cache, and so is every later chunk; the bytes are zarr's."""
    array, encoder, sink, data, blocks = _chunks(tmp_path)
    real, calls = os.pwrite, []

    def second_refused(fd, view, offset):
        calls.append(len(view))
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, view[: 128 * 1024] if len(calls) == 1 else view, offset)  # the first one short, aligned

    monkeypatch.setattr(chunkio.os, "pwrite", second_refused)
    for t, block in enumerate(blocks):
        sink.put(encoder.key((t, 0, 0)), encoder.encode(block))
    assert len(calls) == 2 and not sink.direct and (sink.direct_files, sink.buffered_files) == (0, 2)
    _assert_stored(tmp_path, array, encoder, data, blocks)


def test_a_short_direct_write_off_the_alignment_finishes_through_the_page_cache(tmp_path, monkeypatch):
    """A direct write that stops off the alignment (a short count): the rest of the chunk, its checksum
    included, goes through the page cache after it, into the same file; direct I/O stays on."""
    array, encoder, sink, data, blocks = _chunks(tmp_path)
    real = os.pwrite

    def short_and_unaligned(fd, view, offset):  # (a direct write of an unaligned length would be refused)
        if offset:
            return real(fd, view, offset)
        real(fd, view[: 4 * 4096], offset)
        return 3 * 4096 + 100  # what a short write says: the bytes after it are written again

    monkeypatch.setattr(chunkio.os, "pwrite", short_and_unaligned)
    for t, block in enumerate(blocks):
        sink.put(encoder.key((t, 0, 0)), encoder.encode(block))
    assert sink.direct and (sink.direct_files, sink.buffered_files) == (2, 0)
    _assert_stored(tmp_path, array, encoder, data, blocks)


def test_a_write_that_makes_no_progress_fails_instead_of_looping(tmp_path, monkeypatch):
    """``writev`` answering 0 bytes for data left to write (never seen; a retry would loop for ever) fails
    the chunk with ``EIO``, leaving no file."""
    array, encoder, sink, data, blocks = _chunks(tmp_path, count=1)
    sink.direct = False
    monkeypatch.setattr(chunkio.os, "writev", lambda fd, views: 0)
    raised = []

    def put():  # in a thread: a write that retried for ever fails this test instead of hanging the run
        try:
            sink.put(encoder.key((0, 0, 0)), encoder.encode(blocks[0]))
        except OSError as exc:
            raised.append(exc)

    writer = threading.Thread(target=put, daemon=True)
    writer.start()
    writer.join(30)
    assert not writer.is_alive(), "the write loops instead of failing"
    assert len(raised) == 1 and raised[0].errno == errno.EIO and "wrote 0 bytes" in str(raised[0])
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.name.startswith(".tmp-")]
    assert not (tmp_path / "a.zarr" / encoder.key((0, 0, 0))).exists()


def test_a_failed_direct_write_leaves_no_file(tmp_path, monkeypatch):
    array = _array(tmp_path / "a.zarr", "float32", (4, 256, 64))
    encoder, sink = ChunkEncoder(array), LocalSink(str(tmp_path / "a.zarr"), io="direct")

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkio.os, "pwrite", full_disk)
    block = aligned_empty((4, 256, 64), np.float32)
    block[...] = 1.0
    with pytest.raises(OSError, match="No space"):
        sink.put(encoder.key((0, 0, 0)), encoder.encode(block))
    assert not [p for p in (tmp_path / "a.zarr" / "a" / "c").rglob("*") if p.is_file()]


def test_filesystem_type_reads_escapes_and_the_last_of_stacked_mounts(tmp_path, monkeypatch):
    """A mount table the kernel could write (none like it is mounted here): a mount point with a space and a
    backslash in its name, and tmpfs mounted over an ext4 mount point (the later mount hides the earlier)."""
    table = tmp_path / "mountinfo"
    table.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                     "30 22 8:2 / /data rw - ext4 /dev/sda2 rw\n"
                     "31 30 0:40 / /data rw - tmpfs tmpfs rw\n"
                     "32 22 8:3 / /my\\040runs\\134x rw - xfs /dev/sda3 rw\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(table if path == "/proc/self/mountinfo"
                                                                         else path, *a, **k))
    monkeypatch.setattr(chunkio.os.path, "realpath", lambda path: path)
    assert filesystem_type("/data/runs") == "tmpfs"
    assert filesystem_type("/my runs\\x/a.zarr") == "xfs"
    assert filesystem_type("/my runs") == "ext4"
    assert filesystem_type("/elsewhere") == "ext4"


def test_filesystem_type_is_the_one_findmnt_names(tmp_path):
    if not Path("/usr/bin/findmnt").exists():
        pytest.skip("needs findmnt (util-linux)")
    for path in [tmp_path, Path("/dev/shm"), Path("/proc/self")]:
        if not path.exists():
            continue
        expected = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)], capture_output=True,
                                  text=True, check=True).stdout.split()[0]
        assert filesystem_type(str(path)) == expected, path
    assert filesystem_type(str(tmp_path / "not" / "made" / "yet")) == filesystem_type(str(tmp_path))


def test_unknown_io_modes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown io 'fast'"):
        LocalSink(str(tmp_path), io="fast")
