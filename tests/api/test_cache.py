"""The cache-hit fast path: hits answer the bytes of the miss, and a live run is never served a snapshot
older than the documented interval (a commit on a local root is seen at once)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from trajscope.api.state import DEFAULT_ATTRS_TTL, ApiState
from trajscope.store import RunWriter, StoreRoot
from trajscope.producer.two_layer import variables as two_layer_variables

from .conftest import make_run, serving

H, D, N, T = 3, 2, 4, 4


@pytest.mark.parametrize("url", [
    "/api/runs/done/vars/W?step=0:15&neuron=1:3&format=json",
    "/api/runs/done/vars/v?step=8:23:2&format=npy",
    "/api/runs/done/analysis/stable_rank?step=0:30:2",
    "/api/runs/done/plots/loss.png?step=0:17",
])
def test_a_cache_hit_answers_the_bytes_and_headers_of_the_miss(tmp_path, url):
    root = StoreRoot(tmp_path)
    make_run(root, "done", steps=40, chunk_steps=8)
    with serving(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        miss, hit, again = c.get(url), c.get(url), c.get(url)
    assert miss.status_code == hit.status_code == again.status_code == 200, miss.text
    assert miss.headers["x-trajscope-cache"] == "miss"
    assert hit.headers["x-trajscope-cache"] == again.headers["x-trajscope-cache"] == "hit"
    assert hit.content == miss.content == again.content
    drop = {"x-trajscope-cache", "date"}
    assert {k: v for k, v in hit.headers.items() if k not in drop} == {
        k: v for k, v in miss.headers.items() if k not in drop}


def _writer(root: StoreRoot, rng) -> RunWriter:
    return RunWriter.create(root, "live", variables=two_layer_variables(), sizes={"neuron": H, "feature": D,
                            "sample": N}, capacity=4 * T, static={"X": rng.normal(size=(N, D)),
                            "y": np.where(np.arange(N) % 2, 1, -1)}, chunk_bytes=H * D * 4 * T,
                            attrs={"config": {"seed": 0}})


def _block(rng, start: int) -> dict[str, np.ndarray]:
    return {"W": rng.normal(size=(T, H, D)).astype(np.float32), "v": rng.normal(size=(T, H)).astype(np.float32),
            "loss": np.ones(T), "output": rng.normal(size=(T, N)).astype(np.float32),
            "step": np.arange(start, start + T), "t": np.arange(start, start + T) * 1e-3}


def test_a_commit_to_a_live_run_is_served_at_once_on_a_local_root(tmp_path):
    root, rng = StoreRoot(tmp_path), np.random.default_rng(0)
    writer = _writer(root, rng)
    written = []
    with serving(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        for k in range(4):
            block = _block(rng, k * T)
            written.append(block["W"])
            writer.write_block(k * T, block)
            writer.commit((k + 1) * T)
            # asked right away, twice (the second from the cache): the new steps are there
            for _ in range(2):
                r = c.get("/api/runs/live/vars/W?format=json")
                assert r.status_code == 200, r.text
                assert r.headers["x-trajscope-committed-steps"] == str((k + 1) * T)
                np.testing.assert_array_equal(np.asarray(r.json()["values"], dtype=np.float32),
                                              np.concatenate(written))
                assert c.get("/api/runs/live").json()["committed_steps"] == (k + 1) * T
        writer.finish("complete")
        assert c.get("/api/runs/live").json()["status"] == "complete"


def test_a_live_run_is_never_staler_than_the_documented_interval(tmp_path, monkeypatch):
    """Where a replacement of ``zarr.json`` cannot be told by its ``stat`` (object stores, coarse
    timestamps), the attributes are still read again after ``attrs_ttl`` seconds."""
    monkeypatch.setattr(ApiState, "_stamp", lambda self, run_id: ("blind",))
    root, rng = StoreRoot(tmp_path), np.random.default_rng(1)
    writer = _writer(root, rng)
    writer.write_block(0, _block(rng, 0))
    writer.commit(T)
    ttl = 0.5
    with serving(root, attrs_ttl=ttl) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/api/runs/live/vars/v").headers["x-trajscope-committed-steps"] == str(T)
        writer.write_block(T, _block(rng, T))
        writer.commit(2 * T)
        committed = time.monotonic()
        seen = None
        while seen != str(2 * T):
            r = c.get("/api/runs/live/vars/v")
            assert r.status_code == 200, r.text
            seen = r.headers["x-trajscope-committed-steps"]
            assert seen in (str(T), str(2 * T))
            assert time.monotonic() - committed < ttl + 0.5, "a stale snapshot outlived attrs_ttl"
        r = c.get(f"/api/runs/live/vars/v?step=0:{2 * T - 1}&format=npy")
        assert r.status_code == 200 and r.headers["x-trajscope-shape"] == f"{2 * T},{H}"
    writer.finish("complete")


def test_the_documented_interval_is_a_quarter_second():
    assert DEFAULT_ATTRS_TTL == 0.25


def test_a_deleted_run_is_gone_at_once(tmp_path):
    root = StoreRoot(tmp_path)
    make_run(root, "gone", steps=8, chunk_steps=8)
    with serving(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        url = "/api/runs/gone/vars/loss"
        assert c.get(url).status_code == 200 and c.get(url).headers["x-trajscope-cache"] == "hit"
        root.delete("gone")  # by another process: the server is not told
        r = c.get(url)
        assert r.status_code == 404 and "gone" in r.json()["detail"]


def test_a_run_deleted_and_created_again_within_a_second_is_not_served_from_the_cache(tmp_path, monkeypatch):
    """``created`` and ``updated`` resolve one second: a run deleted (``trajscope rm``, by another process) and
    created again under the same id within it looked like the same version, and its old answers were served.
    The fixed clock below makes every timestamp equal; ``run_uid`` tells the two runs apart."""
    from trajscope.store import writer as writer_module

    monkeypatch.setattr(writer_module, "_now", lambda: "2026-01-01T00:00:00+00:00")
    root = StoreRoot(tmp_path)
    first = make_run(root, "again", steps=8, chunk_steps=8, seed=1)
    with serving(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        url = "/api/runs/again/vars/W?step=0"
        assert c.get(url).json()["values"] == first["W"][0].tolist()
        assert c.get(url).headers["x-trajscope-cache"] == "hit"
        root.delete("again")
        second = make_run(root, "again", steps=8, chunk_steps=8, seed=2)
        assert not np.array_equal(first["W"][0], second["W"][0])
        r = c.get(url)
        assert r.headers["x-trajscope-cache"] == "miss" and r.json()["values"] == second["W"][0].tolist()
        assert c.get("/api/runs/again/vars/W?step=7").json()["values"] == second["W"][7].tolist()


def test_a_request_arriving_while_the_answer_is_stored_does_not_build_it_again(monkeypatch):
    """Found by a review: ``get_or_build`` let the builder's gate go before it stored the value, so a request
    arriving in between found neither and built the answer a second time."""
    import threading

    from trajscope.api.state import ByteLRU

    cache = ByteLRU(2**20)
    real_put = cache.put

    def slow_put(key, value, size):  # widens the moment between the build and the value being there
        time.sleep(0.3)
        real_put(key, value, size)

    monkeypatch.setattr(cache, "put", slow_put)
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"answer"

    first = threading.Thread(target=cache.get_or_build, args=("k", build, len))
    first.start()
    time.sleep(0.1)  # the first has built and is storing
    assert cache.get_or_build("k", build, len) == (b"answer", True)
    first.join()
    assert len(builds) == 1


def test_a_request_waiting_for_anothers_build_stops_when_its_client_goes():
    """Found by a review: a request waiting on the cache's gate for another's build of the same answer (the
    states a live update's requests share) held its work slot until that build ended, whatever its client did.
    The server's cache now asks, while it waits, whether its request was stopped."""
    import threading

    from trajscope.api.state import ByteLRU
    from trajscope.api.work import ComputationStopped, _stoppable, stop_if_asked

    cache = ByteLRU(2**20, interrupt=stop_if_asked)
    building = threading.Event()

    def slow_build() -> bytes:
        building.set()
        time.sleep(3.0)
        return b"answer"

    first = threading.Thread(target=cache.get_or_build, args=("k", slow_build, len))
    first.start()
    assert building.wait(5)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()  # its client goes 0.3 s into the wait
    began = time.monotonic()
    with pytest.raises(ComputationStopped):
        _stoppable(stop, cache.get_or_build, "k", lambda: b"built twice", len)
    assert time.monotonic() - began < 1.5  # not the 3 s of the other's build
    first.join()
    assert cache.get_or_build("k", lambda: b"built twice", len) == (b"answer", True)
    assert cache.get_or_build("other", lambda: b"x", len) == (b"x", False)  # no gate left held
