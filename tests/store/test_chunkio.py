"""The store's own chunk encoding and concurrent writes: bytes identical to zarr's, ordered commits, fsync order."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.store.chunkio import JOIN_HOLDING_GIL_BELOW, ChunkEncoder, LocalSink, StateRows, checksum, joined
from trajscope.store.layout import SMALL_CHUNK_BYTES, chunk_plan, codecs_for, fill_value_for

DTYPES = ("float32", "float64", "int64", "int8")


def _zarr_array(path: Path, dtype: str, compressor: str, shape=(10, 3, 5), chunks=(4, 3, 5)):
    serializer, compressors = codecs_for(compressor)
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
    return group.create_array("a", shape=shape, chunks=chunks, dtype=dtype, serializer=serializer,
                              compressors=compressors, filters=None, fill_value=fill_value_for(dtype))


def _values(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(-100, 100, size=shape).astype(dtype)


def _written_by_zarr(tmp_path, dtype, compressor, shape, chunks, seed):
    """A zarr array of 10 steps (time chunks of 4) whose rows 0:4 (a whole chunk) and 8:10 (the last
    chunk, partly written: rows 10, 11 are beyond the shape) zarr itself wrote; its encoder, the values."""
    rng = np.random.default_rng(seed)
    array = _zarr_array(tmp_path / "z.zarr", dtype, compressor, shape=shape, chunks=chunks)
    data = _values(rng, shape, dtype)
    array[0:4] = data[0:4]
    array[8:10] = data[8:10]
    return ChunkEncoder(array), data, rng


@pytest.mark.parametrize("compressor", ["none", "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_encoded_bytes_equal_zarrs_own_and_zarr_decodes_them(tmp_path, dtype, compressor):
    # chunks split the second dimension too, so edge chunks are padded along it
    encoder, data, rng = _written_by_zarr(tmp_path, dtype, compressor, (10, 5, 3), (4, 2, 3), seed=1)
    for t, rows in ((0, slice(0, 4)), (2, slice(8, 10))):
        for j in range(3):  # neuron chunks 0..2, the last one an edge chunk (1 of 2 rows)
            cells = data[rows, 2 * j : 2 * j + 2]
            key = encoder.key((t, j, 0))
            stored = (tmp_path / "z.zarr" / key).read_bytes()
            assert b"".join(bytes(p) for p in encoder.encode(cells)) == stored, key
    # and the other way round: zarr decodes what the encoder writes, for a partially written chunk
    other = _zarr_array(tmp_path / "o.zarr", dtype, compressor, shape=(12, 5, 3), chunks=(4, 2, 3))
    sink = LocalSink(str(tmp_path / "o.zarr"))
    enc = ChunkEncoder(other)
    part = _values(rng, (3, 5, 3), dtype)  # rows 8..10 of 12: row 11 stays at the fill value
    for j in range(3):
        sink.put(enc.key((2, j, 0)), enc.encode(part[:, 2 * j : 2 * j + 2]))
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "o.zarr" / "a"), mode="r")
    np.testing.assert_array_equal(back[8:11], part)
    fill = back[11]
    if np.dtype(dtype).kind == "f":
        assert np.isnan(fill).all()
    else:
        assert (fill == 0).all()
    # zarr's own write of the same partial chunk gives the same bytes
    array2 = _zarr_array(tmp_path / "p.zarr", dtype, compressor, shape=(12, 5, 3), chunks=(4, 2, 3))
    array2[8:11] = part
    for j in range(3):
        key = enc.key((2, j, 0))
        assert (tmp_path / "p.zarr" / key).read_bytes() == (tmp_path / "o.zarr" / key).read_bytes()


@pytest.mark.parametrize("compressor", ["none", "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_given_one_per_state_encode_to_zarrs_bytes_without_stacking(tmp_path, dtype, compressor):
    """The recorder's by-reference hand-off: one array per state, written as zarr writes the stacked chunk."""
    encoder, data, rng = _written_by_zarr(tmp_path, dtype, compressor, (10, 3, 5), (4, 3, 5), seed=2)
    for t, rows in ((0, range(0, 4)), (2, range(8, 10))):
        # separate arrays, as a training loop makes them; one is not C-contiguous, one has the other byte order
        states = [np.array(data[i]) for i in rows]
        states[0] = np.asfortranarray(states[0])
        if np.dtype(dtype).itemsize > 1:
            states[-1] = states[-1].astype(np.dtype(dtype).newbyteorder(">"))
        parts = encoder.encode(StateRows(states))
        stored = (tmp_path / "z.zarr" / encoder.key((t, 0, 0))).read_bytes()
        assert b"".join(bytes(p) for p in parts) == stored
        if compressor == "none":  # no copy: the payload is the rows themselves, one buffer each
            assert len(parts) >= len(states) + 1
            middle = states[1] if len(states) > 2 else None
            if middle is not None:
                assert np.shares_memory(parts[1], middle)
    # the checksum is chained over the parts, equal to google-crc32c (zarr's) over their concatenation
    import google_crc32c

    pieces = [rng.bytes(n) for n in (0, 1, 7, 4096, 33)]
    assert checksum(pieces) == int(google_crc32c.value(b"".join(pieces))).to_bytes(4, "little")
    # written through the sink, plain zarr decodes them
    other = _zarr_array(tmp_path / "o.zarr", dtype, compressor, shape=(10, 3, 5), chunks=(4, 3, 5))
    sink, enc = LocalSink(str(tmp_path / "o.zarr")), ChunkEncoder(other)
    sink.put(enc.key((1, 0, 0)), enc.encode(StateRows([data[i] for i in range(4, 7)])))
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "o.zarr" / "a"), mode="r")
    np.testing.assert_array_equal(back[4:7], data[4:7])


def test_other_codec_pipelines_are_refused(tmp_path):
    from zarr.codecs import BytesCodec, GzipCodec

    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    array = group.create_array("a", shape=(4,), chunks=(2,), dtype="float32", serializer=BytesCodec(),
                               compressors=(GzipCodec(),))
    with pytest.raises(ValueError, match="not bytes"):
        ChunkEncoder(array)


def test_chunk_plan_by_state_size():
    f4 = {"W": "float32", "v": "float32", "loss": "float64", "output": "float32"}
    # the reference run: W 313 kB a state, 8 MiB chunks of 26 states; small variables in ~1 MiB chunks
    plan = chunk_plan({"W": (100, 784), "v": (100,), "loss": (), "output": (1000,)}, f4, capacity=2001)
    T = plan.chunk_steps
    assert T == 8 * 2**20 // (100 * 784 * 4) == 26
    assert plan.chunks["W"] == (T, 100, 784)
    for name, per_step in (("v", 400), ("output", 4000), ("loss", 8)):
        steps = plan.chunks[name][0]
        assert steps % T == 0 and steps > T
        assert steps * per_step <= SMALL_CHUNK_BYTES or steps == T
    assert plan.chunks["loss"][0] <= -(-2001 // T) * T  # never longer than the run
    # a large state (6.3 MB): at least 4 states a chunk
    plan = chunk_plan({"W": (2000, 784), "v": (2000,)}, f4, capacity=10_000)
    assert plan.chunk_steps == 4 and plan.chunks["W"] == (4, 2000, 784)
    # a state above 64 MiB is split along its second dimension
    plan = chunk_plan({"W": (20_000, 1000)}, f4, capacity=10)
    assert plan.chunk_steps == 1 and plan.chunks["W"][1] < 20_000 and plan.chunks["W"][2] == 1000
    assert plan.chunks["W"][1] * 1000 * 4 <= 64 * 2**20


def _writer(root, run_id="r", capacity=60, h=3, dim=4, n=5, chunk_bytes=3 * 4 * 4 * 8, **kwargs):
    rng = np.random.default_rng(0)
    return RunWriter.create(
        root, run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=capacity, static={"X": rng.normal(size=(n, dim)), "y": np.where(np.arange(n) % 2, -1, 1)},
        attrs={"config": {}}, chunk_bytes=chunk_bytes, **kwargs,
    )


def _block(start, count, h=3, dim=4, n=5):
    rng = np.random.default_rng(start)
    steps = np.arange(start, start + count)
    return {"W": rng.normal(size=(count, h, dim)).astype(np.float32),
            "v": rng.normal(size=(count, h)).astype(np.float32), "loss": rng.random(count),
            "output": rng.normal(size=(count, n)).astype(np.float32), "step": steps, "t": steps * 0.1}


class GatedSink:
    """Wraps a sink; writes of the keys in ``held`` wait until ``gate`` is set."""

    def __init__(self, sink, held):
        self.sink, self.held, self.gate = sink, set(held), threading.Event()
        self.put_keys: list[str] = []

    def put(self, key, parts):
        if key in self.held:
            assert self.gate.wait(20)
        self.sink.put(key, parts)
        self.put_keys.append(key)

    def __getattr__(self, name):  # durable_tree, durable_document
        return getattr(self.sink, name)


def test_commits_never_cover_a_block_not_fully_written(tmp_path):
    root = StoreRoot(tmp_path)
    writer = _writer(root)
    T = writer.chunk_steps
    hot = writer._hot()
    hot.sink = gated = GatedSink(hot.sink, held={"W/c/0/0/0"})  # the first block's W chunk is slow
    blocks = [_block(k * T, T) for k in range(3)]
    handles = [writer.write_block(k * T, blocks[k]) for k in range(3)]
    handles[1].wait(20)
    handles[2].wait(20)  # later blocks complete first...
    assert not handles[0].done()
    assert writer.written_steps == 0  # ...but nothing is written "through" them
    writer.commit()  # commits what is written: nothing
    assert root.read_attrs("r")["committed_steps"] == 0 and open_run("r", root).sizes["step"] == 0
    committer = threading.Thread(target=writer.commit, args=(2 * T,))
    committer.start()  # waits for block 0
    committer.join(0.3)
    assert committer.is_alive() and root.read_attrs("r")["committed_steps"] == 0
    gated.gate.set()
    committer.join(20)
    assert root.read_attrs("r")["committed_steps"] == 2 * T
    assert writer.written_steps == 3 * T
    assert writer.commit_if_due(force=True) and root.read_attrs("r")["committed_steps"] == 3 * T
    ds = open_run("r", root)
    np.testing.assert_array_equal(ds.W.values, np.concatenate([b["W"] for b in blocks]))
    np.testing.assert_array_equal(ds.v.values, np.concatenate([b["v"] for b in blocks]))
    np.testing.assert_array_equal(ds.step.values, np.arange(3 * T))
    # the small variables have longer chunks than W (a few files per run), and plain zarr reads them
    chunk_len = {n: zarr.open_array(str(tmp_path / "r.zarr" / n), mode="r").chunks[0] for n in ("v", "W")}
    assert chunk_len["v"] > T and chunk_len["W"] == T
    assert {k for k in gated.put_keys if k.startswith("v/")} == {"v/c/0/0"}  # one file, rewritten per block
    writer.finish("complete")
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    np.testing.assert_array_equal(plain["loss"][:], np.concatenate([b["loss"] for b in blocks]))


def test_small_variables_are_written_once_per_commit_not_per_block(tmp_path):
    """A partial chunk of a small variable is written by the commit that covers its rows (before the
    attributes), and a complete one once, by the block that completes it: not one rewrite per block."""
    root = StoreRoot(tmp_path)
    sizes = {"h": 80, "dim": 100, "n": 3000}  # W 32 kB a state, output 12 kB: output's chunk spans 10 blocks
    writer = _writer(root, capacity=60, chunk_bytes=80 * 100 * 4 * 2, **sizes)
    T, span = writer.chunk_steps, writer.arrays["output"].chunks[0]
    assert (T, span) == (2, 20)
    hot = writer._hot()
    hot.sink = counted = GatedSink(hot.sink, held=set())
    blocks = [_block(k * T, T, **sizes) for k in range(span // T + 2)]
    for k in range(3):
        writer.write_block(k * T, blocks[k]).wait(20)
    assert writer.written_steps == 3 * T  # the blocks are written ...
    assert not [k for k in counted.put_keys if not k.startswith("W/")]  # ... the small variables' rows wait
    writer.commit()
    assert counted.put_keys.count("output/c/0/0") == 1  # one write for three blocks
    # what the commit covers is on storage, read by plain zarr (not through trajscope)
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    np.testing.assert_array_equal(plain["output"][: 3 * T], np.concatenate([b["output"] for b in blocks[:3]]))
    np.testing.assert_array_equal(plain["step"][: 3 * T], np.arange(3 * T))
    writer.commit(3 * T)  # nothing new: no write
    assert counted.put_keys.count("output/c/0/0") == 1
    for k in range(3, len(blocks)):  # the block that completes output's first chunk writes it, once
        writer.write_block(k * T, blocks[k]).wait(20)
    assert counted.put_keys.count("output/c/0/0") == 2 and "output/c/1/0" not in counted.put_keys
    writer.commit()
    assert counted.put_keys.count("output/c/0/0") == 2 and counted.put_keys.count("output/c/1/0") == 1
    writer.finish("complete")
    ds = open_run("r", root)
    np.testing.assert_array_equal(ds.output.values, np.concatenate([b["output"] for b in blocks]))
    np.testing.assert_array_equal(ds.loss.values, np.concatenate([b["loss"] for b in blocks]))


def test_a_small_variables_chunk_buffer_serves_a_later_chunk_only_once_its_write_landed(tmp_path):
    """A complete chunk of a small variable is written from its buffer (no copy), and the buffer serves a later
    chunk once that write has landed, never while a write may read it. Here the write that completes
    ``output``'s first chunk is held back while blocks fill the next three chunks: the held chunk's buffer is
    not reused, the others' are, and every row reads back (by plain zarr) as it was submitted."""
    root = StoreRoot(tmp_path)
    sizes = {"h": 80, "dim": 100, "n": 3000}  # output's chunk spans 10 blocks
    writer = _writer(root, capacity=100, chunk_bytes=80 * 100 * 4 * 2, **sizes)
    T, span = writer.chunk_steps, writer.arrays["output"].chunks[0]
    assert (T, span) == (2, 20)
    hot = writer._hot()
    hot.sink = gated = GatedSink(hot.sink, held={"output/c/0/0"})
    blocks = [_block(k * T, T, **sizes) for k in range(100 // T)]
    completing_first = span // T - 1  # the block whose output write is held
    buffers: dict[int, int] = {}  # output chunk -> id of the buffer its rows went into
    handles = []
    for k, block in enumerate(blocks):
        if k == 4 * span // T:  # three chunks later: let the first chunk's write land
            gated.gate.set()
            handles[completing_first].wait(20)
        handles.append(writer.write_block(k * T, block))
        buffers.setdefault(k * T // span, id(hot._buffers["output"][k * T // span]))
        if k != completing_first:
            handles[-1].wait(20)
    assert buffers[0] not in (buffers[1], buffers[2], buffers[3])  # in flight all along: never reused
    assert buffers[2] == buffers[1] and buffers[3] == buffers[1]  # landed: reused, chunk after chunk
    assert buffers[4] in (buffers[0], buffers[1])
    writer.commit()
    writer.finish("complete")
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    for name in ("output", "v", "loss", "W"):
        np.testing.assert_array_equal(plain[name][:], np.concatenate([b[name] for b in blocks]), err_msg=name)


def test_a_commits_write_of_a_partial_small_chunk_is_a_copy_that_later_rows_do_not_change(tmp_path):
    """A commit writes a small variable's partial chunk from a copy: the rows that arrive while that write is
    under way go into the buffer, not into the write, whose checksum was taken over what it holds. Here the
    commit's write of ``output``'s first chunk waits, encoded, while the next block adds rows to that chunk;
    what the commit covers then reads back by plain zarr, checksum and all."""
    root = StoreRoot(tmp_path)
    sizes = {"h": 80, "dim": 100, "n": 3000}  # output's chunk spans 10 blocks
    writer = _writer(root, capacity=60, chunk_bytes=80 * 100 * 4 * 2, **sizes)
    T = writer.chunk_steps
    hot = writer._hot()
    blocks = [_block(k * T, T, **sizes) for k in range(4)]
    for k in range(3):
        writer.write_block(k * T, blocks[k]).wait(20)

    class Arrived(GatedSink):  # says when a held write has arrived (encoded), then waits for the gate
        def put(self, key, parts):
            if key in self.held:
                arrived.set()
            super().put(key, parts)

    arrived = threading.Event()
    hot.sink = gated = Arrived(hot.sink, held={"output/c/0/0"})
    committer = threading.Thread(target=writer.commit, args=(3 * T,))
    committer.start()
    assert arrived.wait(20)  # the commit's write of the partial chunk is encoded, not yet written
    writer.write_block(3 * T, blocks[3]).wait(20)  # more rows of the same chunk arrive meanwhile
    gated.gate.set()
    committer.join(20)
    assert root.read_attrs("r")["committed_steps"] == 3 * T
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")  # the commit's write, as it landed
    np.testing.assert_array_equal(plain["output"][: 3 * T], np.concatenate([b["output"] for b in blocks[:3]]))
    writer.commit()
    writer.finish("complete")
    np.testing.assert_array_equal(open_run("r", root).output.values, np.concatenate([b["output"] for b in blocks]))


def test_a_variable_of_no_values_is_committed_over(tmp_path):
    """A variable with a zero-size dimension (here ``output`` of a run of no samples) has no chunk files: a
    commit finds all of its rows on storage instead of failing, and the run reads back."""
    root = StoreRoot(tmp_path)
    writer = _writer(root, capacity=40, n=0)
    T = writer.chunk_steps
    blocks = [_block(k * T, T, n=0) for k in range(3)]
    for k, block in enumerate(blocks):
        writer.write_block(k * T, block).wait(20)
        writer.commit()
        assert root.read_attrs("r")["committed_steps"] == (k + 1) * T
    writer.finish("complete")
    ds = open_run("r", root)
    assert ds.output.shape == (3 * T, 0)
    np.testing.assert_array_equal(ds.W.values, np.concatenate([b["W"] for b in blocks]))
    np.testing.assert_array_equal(ds.loss.values, np.concatenate([b["loss"] for b in blocks]))


def test_a_commit_waits_for_the_small_variables_rows_it_covers(tmp_path):
    """committed_steps never covers rows of a small variable that are not on storage."""
    root = StoreRoot(tmp_path)
    writer = _writer(root, capacity=400)
    T = writer.chunk_steps
    hot = writer._hot()
    hot.sink = gated = GatedSink(hot.sink, held={"output/c/0/0"})
    writer.write_block(0, _block(0, T)).wait(20)
    committer = threading.Thread(target=writer.commit, args=(T,))
    committer.start()
    committer.join(0.3)
    assert committer.is_alive() and root.read_attrs("r")["committed_steps"] == 0
    gated.gate.set()
    committer.join(20)
    assert root.read_attrs("r")["committed_steps"] == T
    np.testing.assert_array_equal(open_run("r", root).output.values, _block(0, T)["output"])
    writer.finish("complete")


def test_a_commit_covers_an_earlier_small_chunk_whose_completing_write_is_still_in_flight(tmp_path):
    """The block that completes a small variable's chunk is slow; a later block has started the next
    chunk; a commit at the written frontier must not write the attributes before the first chunk lands."""
    root = StoreRoot(tmp_path)
    sizes = {"h": 80, "dim": 100, "n": 3000}
    writer = _writer(root, capacity=60, chunk_bytes=80 * 100 * 4 * 2, **sizes)
    T, span = writer.chunk_steps, writer.arrays["output"].chunks[0]
    hot = writer._hot()
    hot.sink = gated = GatedSink(hot.sink, held={"output/c/0/0"})
    blocks = [_block(k * T, T, **sizes) for k in range(span // T + 1)]
    for k in range(span // T - 1):
        writer.write_block(k * T, blocks[k]).wait(20)
    completing = writer.write_block(span - T, blocks[span // T - 1])  # its output chunk write is held back
    writer.write_block(span, blocks[span // T]).wait(20)  # the next chunk has begun
    assert not completing.done() and writer.written_steps == span - T
    committer = threading.Thread(target=writer.commit_if_due, kwargs={"force": True})
    committer.start()
    committer.join(0.3)
    assert committer.is_alive() and root.read_attrs("r")["committed_steps"] == 0
    gated.gate.set()
    committer.join(20)
    assert root.read_attrs("r")["committed_steps"] == span - T
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")  # what is on storage, not what is held
    np.testing.assert_array_equal(plain["output"][: span - T], np.concatenate([b["output"] for b in blocks[:-2]]))
    writer.commit()
    np.testing.assert_array_equal(open_run("r", root).output.values, np.concatenate([b["output"] for b in blocks]))
    writer.finish("complete")


def test_a_failed_chunk_write_is_never_committed(tmp_path):
    root = StoreRoot(tmp_path)
    writer = _writer(root)
    T = writer.chunk_steps
    hot = writer._hot()

    class Broken:
        def put(self, key, parts):
            if key.startswith("W/c/1/"):
                raise OSError("disk full (simulated)")
            hot_sink.put(key, parts)

        def __getattr__(self, name):
            return getattr(hot_sink, name)

    hot_sink, hot.sink = hot.sink, Broken()
    writer.write_block(0, _block(0, T)).wait(20)
    bad = writer.write_block(T, _block(T, T))
    with pytest.raises(Exception, match="disk full"):
        bad.wait(20)
    with pytest.raises(Exception, match="disk full"):
        writer.commit(2 * T)
    writer.commit(T)  # what was written before the failure still commits
    assert root.read_attrs("r")["committed_steps"] == T
    with pytest.raises(Exception, match="disk full"):
        writer.write_block(2 * T, _block(2 * T, T))
    writer.finish("failed", error="test")


def test_resume_inside_a_small_variables_chunk_keeps_its_committed_rows(tmp_path):
    root = StoreRoot(tmp_path)
    writer = _writer(root)
    T = writer.chunk_steps
    data = [_block(k * T, T) for k in range(4)]
    for k in range(2):
        writer.write_block(k * T, data[k])
    writer.commit(2 * T)
    writer.finish("interrupted")
    again = RunWriter.reopen(root, "r")
    assert again.arrays["v"].chunks[0] > 2 * T  # the rows 0..2T sit in the same small chunk
    for k in range(2, 4):
        again.write_block(k * T, data[k])
    again.commit(4 * T)
    again.finish("complete")
    ds = open_run("r", root)
    np.testing.assert_array_equal(ds.v.values, np.concatenate([b["v"] for b in data]))
    np.testing.assert_array_equal(ds.output.values, np.concatenate([b["output"] for b in data]))


def test_memory_root_writes_through_fsspec():
    root = StoreRoot("memory://hotpath-test")
    writer = _writer(root, run_id="m")
    T = writer.chunk_steps
    data = [_block(k * T, T) for k in range(2)] + [_block(2 * T, 3)]
    for k, block in enumerate(data):
        writer.write_block(k * T, block)
    writer.commit(2 * T + 3)
    writer.finish("complete")
    ds = open_run("m", root)
    np.testing.assert_array_equal(ds.W.values, np.concatenate([b["W"] for b in data]))
    np.testing.assert_allclose(ds.t.values, np.arange(2 * T + 3) * 0.1)
    root.delete("m")


def test_joined_is_the_concatenation_as_a_new_bytes_object():
    """What an fsspec root is given per chunk: equal to ``b"".join`` for any mix of buffers, above and below
    the size copied without the GIL, and a copy (later changes to a part do not reach it)."""
    rng = np.random.default_rng(3)
    big = rng.normal(size=(40, 500)).astype(np.float32)  # 80 kB: copied with the GIL released
    assert big.nbytes > JOIN_HOLDING_GIL_BELOW
    rows = [np.array(big[i]) for i in range(40)]  # one buffer per state, as StateRows gives them
    for parts in ([big, b"\x01\x02\x03\x04"], rows + [b"", memoryview(b"tail")], [b"abc", np.arange(3)], [], [b""]):
        expected = b"".join(memoryview(p).cast("B") for p in parts)
        got = joined(parts)
        assert type(got) is bytes and got == expected and hash(got) == hash(expected)
    first = joined([big, b"crc!"])
    before = big[0, :1].tobytes()
    big[0, 0] += 1.0  # the source changes after the put: the stored object does not
    assert first[:4] == before != big[0, :1].tobytes()
    second = joined([big, b"crc!"])
    assert second is not first and second[:4] == big[0, :1].tobytes() and second[4:] == first[4:]
    import sys

    import trajscope.store.chunkio as chunkio

    assert bool(chunkio._new_bytes) == (sys.implementation.name == "cpython")  # the GIL-free copy ran here


def test_memory_root_stores_chunks_above_the_gil_free_size_exactly(tmp_path):
    """Chunks larger than ``JOIN_HOLDING_GIL_BELOW`` through ``memory://``, given as rows and as blocks."""
    root = StoreRoot("memory://hotpath-large")
    h, dim = 40, 100  # 16 kB a state, chunks of 8 states: 128 kB files
    writer = _writer(root, run_id="big", capacity=20, h=h, dim=dim, chunk_bytes=h * dim * 4 * 8)
    T = writer.chunk_steps
    assert T * h * dim * 4 > JOIN_HOLDING_GIL_BELOW
    data = [_block(k * T, T, h=h, dim=dim) for k in range(2)] + [_block(2 * T, 20 - 2 * T, h=h, dim=dim)]
    for k, block in enumerate(data):
        if k == 1:  # one array per state, as the recorder hands them over
            block = {**block, "W": StateRows([np.array(row) for row in block["W"]])}
        writer.write_block(k * T, block)
    writer.commit(20)
    writer.finish("complete")
    ds = open_run("big", root)
    np.testing.assert_array_equal(ds.W.values, np.concatenate([np.asarray(b["W"]) for b in data]))
    np.testing.assert_array_equal(ds.output.values, np.concatenate([b["output"] for b in data]))
    root.delete("big")


class _InterruptedAfterAdd(set):
    """``HotPath._outstanding`` whose next ``add`` raises KeyboardInterrupt once it has added: a SIGINT
    CPython delivers as that call returns."""

    armed = False

    def add(self, item):
        super().add(item)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


@pytest.mark.parametrize("moment", ["submitting its jobs", "just registered"])
def test_an_interrupt_while_a_block_is_launched_never_hangs_draining_nor_commits_the_block(tmp_path, moment):
    """Ctrl-C on the thread submitting a block (the recorder's training thread) while its jobs go to the pool,
    or as the block has just been registered as outstanding (found by a review: that moment left it there,
    and ``finish`` waited for it forever): the block may never finish, so it is never committed over and
    closing the writer does not wait for it."""
    writer = _writer(StoreRoot(tmp_path), run_id="ctrl-c")
    T = writer.chunk_steps
    writer.write_block(0, _block(0, T)).wait()
    hot = writer._hot()
    submit, calls = hot._pool.submit, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return submit(*args, **kwargs)

    if moment == "just registered":
        hot._outstanding = _InterruptedAfterAdd(hot._outstanding)
        hot._outstanding.armed = True
    else:
        hot._pool.submit = interrupted
    with pytest.raises(KeyboardInterrupt):
        writer.write_block(T, _block(T, T))
    hot._pool.submit = submit
    writer.commit(T)  # what was written before is committed
    assert writer.written_steps == T
    closing = threading.Thread(target=writer.close_writes, daemon=True)
    closing.start()
    closing.join(20)
    assert not closing.is_alive()  # draining did not wait for the interrupted block
    writer.finish("interrupted")
    assert open_run("ctrl-c", StoreRoot(tmp_path)).sizes["step"] == T


def _finish_interrupted_while_a_chunk_is_held(root, run_id, monkeypatch):
    """A writer whose first ``W`` chunk waits at the gate, and whose ``finish`` a Ctrl-C interrupted in its
    wait for the last writes (the unlocking thread's wait is a real one). Returns ``(writer, gated sink)``."""
    from trajscope.store import hotpath

    writer = _writer(root, run_id=run_id)
    hot = writer._hot()
    hot.sink = gated = GatedSink(hot.sink, held={"W/c/0/0/0"})
    writer.write_block(0, _block(0, writer.chunk_steps))
    drain, calls = hotpath.HotPath.drain, []

    def interrupted_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        drain(self)

    monkeypatch.setattr(hotpath.HotPath, "drain", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        writer.finish("interrupted")
    return writer, gated


def test_a_finish_interrupted_while_writes_land_keeps_the_lock_until_they_have(tmp_path, monkeypatch):
    """A second Ctrl-C while ``finish`` waits for the last writes (found by a review): their threads go on
    writing, so the lock is released only once they stop, never while a ``resume`` in this process could take
    the run and have a late write of the old one land over its chunk."""
    from trajscope.store.errors import RunLocked
    from trajscope.store.locks import WriterLock

    root = StoreRoot(tmp_path)
    _, gated = _finish_interrupted_while_a_chunk_is_held(root, "late", monkeypatch)
    with pytest.raises(RunLocked):  # the chunk is still being written: the run stays locked
        WriterLock(root, "late").acquire()
    gated.gate.set()
    deadline = time.monotonic() + 20
    while True:
        try:
            WriterLock(root, "late").acquire().release()
            break
        except RunLocked:
            assert time.monotonic() < deadline, "the lock was never released"
            time.sleep(0.02)
    assert "W/c/0/0/0" in gated.put_keys and os.path.exists(os.path.join(root.run_url("late"), "W/c/0/0/0"))


def test_a_finish_called_again_after_an_interrupted_one_holds_the_lock_to_its_end(tmp_path, monkeypatch):
    """The unlocking thread of an interrupted ``finish`` is told not to release once ``finish`` is called again:
    that call waits for the last writes, writes the final document holding the lock, then releases it."""
    from trajscope.store import writer as writer_module
    from trajscope.store.errors import RunLocked
    from trajscope.store.locks import WriterLock

    root = StoreRoot(tmp_path)
    writer, gated = _finish_interrupted_while_a_chunk_is_held(root, "again", monkeypatch)
    final, held = writer_module.final_document_bytes, []

    def spied(*args, **kwargs):  # the final document: is the lock held as it is made and written?
        time.sleep(0.3)  # (time for an unlocking thread that would release now)
        held.append(writer.lock.held)
        return final(*args, **kwargs)

    monkeypatch.setattr(writer_module, "final_document_bytes", spied)
    again = threading.Thread(target=writer.finish, args=("interrupted",))
    again.start()
    time.sleep(0.2)
    assert again.is_alive()  # waiting for the held chunk
    with pytest.raises(RunLocked):
        WriterLock(root, "again").acquire()
    gated.gate.set()
    again.join(20)
    assert not again.is_alive()
    assert root.read_attrs("again")["status"] == "interrupted" and held == [True]
    WriterLock(root, "again").acquire().release()  # released at the end, once


@pytest.mark.parametrize("landed", [False, True], ids=["writes in flight", "writes landed"])
def test_a_ctrl_c_while_a_finish_called_again_waits_leaves_the_lock_to_be_released(tmp_path, monkeypatch, landed):
    """``finish`` is called again after an interrupted one, and a Ctrl-C cuts its wait for the last writes too,
    while they are still in flight or once they have landed: the lock is released once they land, as after the
    first interrupted finish (it was held until the process exited: a ``resume`` in a notebook's kernel found the
    run locked), and a third ``finish`` ends the run holding it."""
    from trajscope.store import writer as writer_module
    from trajscope.store.locks import WriterLock

    root = StoreRoot(tmp_path)
    writer, gated = _finish_interrupted_while_a_chunk_is_held(root, "thrice", monkeypatch)
    wait = writer_module.RunWriter._wait_for_unlocker

    def cut(self, done):
        if landed:
            gated.gate.set()
            wait(self, done)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module.RunWriter, "_wait_for_unlocker", cut)
    with pytest.raises(KeyboardInterrupt):
        writer.finish("interrupted")
    monkeypatch.setattr(writer_module.RunWriter, "_wait_for_unlocker", wait)
    gated.gate.set()
    deadline = time.monotonic() + 20
    while writer.lock.held:
        assert time.monotonic() < deadline, "the lock was never released"
        time.sleep(0.02)
    WriterLock(root, "thrice").acquire().release()
    writer.finish("interrupted")
    assert root.read_attrs("thrice")["status"] == "interrupted"
    WriterLock(root, "thrice").acquire().release()


def test_a_finish_called_after_the_unlocking_thread_released_takes_the_lock_back(tmp_path, monkeypatch):
    """The last writes landed and the unlocking thread released the lock before ``finish`` is called again: that
    call takes the lock back before it writes the final document (and finds it taken if another writer has it)."""
    from trajscope.store import writer as writer_module
    from trajscope.store.locks import WriterLock

    root = StoreRoot(tmp_path)
    writer, gated = _finish_interrupted_while_a_chunk_is_held(root, "later", monkeypatch)
    gated.gate.set()
    deadline = time.monotonic() + 20
    while writer.lock.held:  # the unlocking thread releases once the chunk is written
        assert time.monotonic() < deadline
        time.sleep(0.02)
    final, held = writer_module.final_document_bytes, []
    monkeypatch.setattr(writer_module, "final_document_bytes",
                        lambda *a, **k: held.append(writer.lock.held) or final(*a, **k))
    writer.finish("interrupted")
    assert held == [True] and root.read_attrs("later")["status"] == "interrupted"
    WriterLock(root, "later").acquire().release()


def test_write_threads_default_to_the_cores_on_a_local_root_and_to_four_elsewhere_or_with_direct_io(tmp_path, monkeypatch):
    from trajscope.store import hotpath

    def pool_size(root, run_id, threads=None, io=None):
        writer = _writer(root, run_id=run_id)
        writer.set_write_options(threads=threads, io=io)
        size = writer._hot()._pool._max_workers
        writer.finish("complete")
        return size

    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(hotpath.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert hotpath.default_write_threads(local=True) == expected
        assert pool_size(StoreRoot(tmp_path), f"c{cores}") == expected
    assert pool_size(StoreRoot(tmp_path), "asked", threads=7) == 7  # an explicit number wins
    # direct I/O waits on the device, not on a core (the affinity above still says 16 cores: ask for 1)
    monkeypatch.setattr(hotpath.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert pool_size(StoreRoot(tmp_path), "direct", io="direct") == hotpath.WAITING_WRITE_THREADS
    assert pool_size(StoreRoot(tmp_path), "buffered", io="buffered") == 1
    memory = StoreRoot("memory://write-threads")
    assert pool_size(memory, "m") == hotpath.WAITING_WRITE_THREADS == 4
    memory.delete("m")


def test_fsync_durability_fsyncs_chunks_and_directories_before_the_commit_then_the_attributes(tmp_path, monkeypatch):
    root = StoreRoot(tmp_path)
    writer = _writer(root)
    writer.set_write_options(durability="fsync")
    T = writer.chunk_steps
    log: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def logging_fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    real_write_bytes = StoreRoot.write_bytes

    def logging_write_bytes(self, run_id, key, data, **kwargs):  # (the root document: the commit)
        if key == "zarr.json":
            log.append(("attrs", str(json.loads(data)["attributes"]["committed_steps"])))
        return real_write_bytes(self, run_id, key, data, **kwargs)

    monkeypatch.setattr(os, "fsync", logging_fsync)
    monkeypatch.setattr(StoreRoot, "write_bytes", logging_write_bytes)
    writer.write_block(0, _block(0, T))
    writer.write_block(T, _block(T, T))
    writer.commit(2 * T)
    run_dir = str(tmp_path / "r.zarr")
    commit_at = log.index(("attrs", str(2 * T)))
    before, after = log[:commit_at], log[commit_at + 1 :]
    fsynced_before = {path for kind, path in before}
    files = [str(p) for p in Path(run_dir).rglob("*") if p.is_file() and p.name != "zarr.json" or
             p.name == "zarr.json" and p.parent != Path(run_dir)]
    assert sum("/W/c/" in f for f in files) == 2 and any("/X/c/" in f for f in files)
    for path in files:
        directory, name = os.path.split(path)
        # the file's data (chunks: fsynced as their temporary file, before the rename) and its directory
        assert path in fsynced_before or any(
            p.startswith(os.path.join(directory, ".tmp-")) and p.endswith("-" + name) for p in fsynced_before), path
        assert directory in fsynced_before, directory
        # every new directory's entry: its parents up to the run directory
        parent = os.path.dirname(directory)
        while len(parent) >= len(run_dir):
            assert parent in fsynced_before, parent
            parent = os.path.dirname(parent)
    # the attributes document: its data fsynced as its temporary file, before the rename; then the directory
    document_data = [i for i, (kind, path) in enumerate(after)
                     if os.path.dirname(path) == run_dir and os.path.basename(path).startswith(".tmp-")]
    assert document_data and ("fsync", run_dir) in after and document_data[0] < after.index(("fsync", run_dir))
    # growing: every array's metadata is fsynced after its resize, before the attributes name the capacity
    log.clear()
    writer.grow(2 * writer.capacity)
    grown_at = log.index(("attrs", str(2 * T)))
    for name in writer.arrays:
        assert ("fsync", os.path.join(run_dir, name, "zarr.json")) in log[:grown_at], name
    assert any(os.path.basename(path).startswith(".tmp-") for _, path in log[grown_at:])
    log.clear()
    writer.finish("complete")  # the final document too
    assert any(os.path.dirname(p) == run_dir and os.path.basename(p).startswith(".tmp-") for _, p in log)
    assert ("fsync", run_dir) in log


def test_process_durability_does_not_fsync(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    writer = _writer(StoreRoot(tmp_path))
    writer.write_block(0, _block(0, writer.chunk_steps))
    writer.commit(writer.chunk_steps)
    writer.grow(2 * writer.capacity)
    writer.finish("complete")
    assert calls == []


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_resume_writes_its_status_as_durably_as_the_run_was_recorded(tmp_path, monkeypatch, durability):
    """Reopening for resume rewrites the root document (status running) before any commit: for a run recorded
    with durability fsync that write is fsynced (temporary file, then the directory), else not."""
    root = StoreRoot(tmp_path)
    rng = np.random.default_rng(0)
    writer = RunWriter.create(root, "r", variables=two_layer_variables(), sizes={"neuron": 3, "feature": 4, "sample": 5},
                              capacity=20, static={"X": rng.normal(size=(5, 4)), "y": np.ones(5)},
                              attrs={"config": {}}, chunk_bytes=3 * 4 * 4 * 8)
    writer.set_write_options(durability=durability)  # kept with the run from its first commit on
    writer.write_block(0, _block(0, writer.chunk_steps)).wait(20)
    writer.commit()
    writer.finish("interrupted")
    assert root.read_attrs("r")["durability"] == durability
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    again = RunWriter.reopen(root, "r")
    again.lock.release()
    run_dir = str(tmp_path / "r.zarr")
    if durability == "fsync":
        assert any(os.path.dirname(p) == run_dir and os.path.basename(p).startswith(".tmp-") for p in fsynced)
        assert run_dir in fsynced
    else:
        assert fsynced == []


def test_a_chunk_handed_over_early_is_never_overwritten_by_its_older_partial_write(tmp_path):
    """A slow loop's chunk goes to the store before it is full (``Recorder.flush_seconds``), then again whole:
    the first, partial write of its ``W`` file is held back until the whole one has landed, and must not replace
    it (the file would go back in time: the committed rows past the partial ones would read as fill values)."""
    root = StoreRoot(tmp_path)
    writer = _writer(root)
    T = writer.chunk_steps
    assert T >= 4
    hot = writer._hot()
    gate, original, puts = threading.Event(), hot._write_piece, []
    key = "W/c/0/0/0"

    def first_write_held(block, encoder, chunk_key, piece, version):
        if chunk_key == key and not puts:
            puts.append(len(piece))
            assert gate.wait(20)
        original(block, encoder, chunk_key, piece, version)

    hot._write_piece = first_write_held
    put, stored = hot.sink.put, []
    hot.sink.put = lambda k, parts: (stored.append(k), put(k, parts))[1]
    block = _block(0, T)
    partial = writer.write_block(0, {name: rows[:2] for name, rows in block.items()})
    whole = writer.write_block(0, block)
    whole.wait(20)
    assert puts == [2] and not partial.done() and writer.written_steps == T  # nothing waits on the old write
    writer.commit(T)
    gate.set()
    partial.wait(20)
    assert stored.count(key) == 1  # the older write was skipped, not stored over the newer one
    ds = open_run("r", root)
    for name in ("W", "v", "loss", "output"):
        np.testing.assert_array_equal(ds[name].values, block[name], err_msg=name)
    # a partial write that lands first is simply replaced by the later, longer one
    later = _block(T, T)
    writer.write_block(T, {name: rows[:3] for name, rows in later.items()}).wait(20)
    writer.commit(T + 3)
    np.testing.assert_array_equal(open_run("r", root).W.values[T:], later["W"][:3])
    writer.write_block(T, later).wait(20)
    writer.commit(2 * T)
    writer.finish("complete")
    plain = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    np.testing.assert_array_equal(plain["W"][: 2 * T], np.concatenate([block["W"], later["W"]]))
