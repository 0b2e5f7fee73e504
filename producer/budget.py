"""Memory and disk a run will need, estimated from its config before anything is allocated or created.

An absurd size (``model.width=1000000000``, ``train.steps=1000000000000``...) is refused with one line
naming the largest item and the field to lower, before the data are built or the run is created.

Estimates (bytes; ``s`` = itemsize of ``train.dtype``, ``h`` width, ``n`` samples, ``D`` features,
``S`` recorded states, ``T`` time chunk length, ``B`` = ``record.buffers``, by default the most the
recorder chooses: :func:`~trajscope.producer.staging.default_buffers` of ``record.write_threads`` or of 4
threads, the most any root gets by default):

* one recorded state ``b = s (h D + h + n) + 24`` (``W``, ``v``, ``output``; ``loss``, ``step``, ``t``);
* data ``8 (4 n D + 2 n²)`` (float64 copies while building, the ``n × n`` Gram of the separation);
* training ``s (4 h D + 3 n h + n D)`` (weights, gradients, pre-activations, inputs on the device);
* recorder ``B T b`` (the chunk buffers; ``2 B T b`` with ``record.writer: process``: an upper
  bound, for a writer process on a GPU copies its chunks from pinned buffers into shared ones) and
  ``24 S`` (the schedule and its times);
* disk ``S b + s n D + n`` (every state, uncompressed, and the static data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from trajscope.producer.config import RunConfig
from trajscope.producer.staging import default_buffers
from trajscope.store import StoreRoot
from trajscope.store.errors import UserError
from trajscope.store.hotpath import LOCAL_WRITE_THREADS_MAX, WAITING_WRITE_THREADS
from trajscope.store.layout import chunk_steps_for

#: fraction of the available memory / free disk a run may plan to use
HEADROOM = 0.9


@dataclass(frozen=True)
class Budget:
    """Estimated needs of a run, in bytes, with the largest memory item named."""

    states: int
    memory_bytes: int
    disk_bytes: int
    largest: str


def recorded_states(config: RunConfig) -> int:
    """Number of recorded states, computed without building the schedule (which may be huge)."""
    steps, rec = config.train.steps, config.record
    if rec.schedule == "log" and steps > 0:
        return min(rec.log_points, steps) + 1
    return steps // rec.every + 1 + (1 if steps % rec.every else 0)


def data_shape(config: RunConfig) -> tuple[int, int] | None:
    """``(n, D)`` from the config alone; ``None`` when only the data file tells (npz)."""
    data = config.data
    if data.kind == "synthetic":
        return data.n, data.dim
    if data.kind == "toy2d":
        return data.n, 2
    if data.kind == "two_point":
        return 2, data.dim
    if data.kind == "mnist":
        return (2 * data.per_class if data.per_class else 14_000), 784
    return None


def estimate(config: RunConfig, n: int, dim: int) -> Budget:
    """The :class:`Budget` of ``config`` trained on ``n`` samples of ``dim`` features (formulas above)."""
    s = np.dtype(config.train.dtype).itemsize
    h = config.model.width
    states = recorded_states(config)
    step_bytes = s * (h * dim + h + n) + 24
    chunk = chunk_steps_for(s * h * dim, int(config.record.chunk_mib * 2**20))
    items = {
        "recorder chunk buffers (model.width × data dim × record.buffers)":
            chunk_buffers(config) * chunk * step_bytes * (2 if config.record.writer == "process" else 1),
        ("data (2 × data.per_class samples × 784 pixels, and their count squared for the separation)"
         if config.data.kind == "mnist" else "data (data.n × data.dim, and data.n² for the separation)"):
            8 * (4 * n * dim + 2 * n * n),
        "training (model.width × data.n × data.dim)": s * (4 * h * dim + 3 * n * h + n * dim),
        "recording schedule (train.steps / record.every)": 24 * states,
    }
    largest = max(items, key=items.get)
    return Budget(states, int(sum(items.values())), int(states * step_bytes + s * n * dim + n), largest)


def chunk_buffers(config: RunConfig) -> int:
    """``B`` of the estimate: ``record.buffers``, else the most the recorder would choose (its default for
    ``record.write_threads``, or for the most write threads any root gets by default)."""
    threads = config.record.write_threads or max(LOCAL_WRITE_THREADS_MAX, WAITING_WRITE_THREADS)
    return config.record.buffers or default_buffers(threads)


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of ``/proc/meminfo``, else physical memory)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


def check_budget(config: RunConfig, root: StoreRoot, n: int, dim: int, *,
                 memory: int | None = None, disk: int | None = None) -> Budget:
    """Raise a one-line :class:`UserError` when the run cannot fit in memory or on the root's disk.

    ``memory`` and ``disk`` override the measured available bytes (tests).
    """
    budget = estimate(config, n, dim)
    memory = available_memory() if memory is None else memory
    if budget.memory_bytes > HEADROOM * memory:
        raise UserError(
            f"this run needs about {size_text(budget.memory_bytes)} of memory, mostly {budget.largest}, but "
            f"{size_text(memory)} is available: lower those sizes (or record.chunk_mib); nothing was created"
        )
    disk = root.free_bytes() if disk is None else disk
    if disk is not None and budget.disk_bytes > HEADROOM * disk:
        pseudo = root.pseudo_file_system() if disk == 0 else None
        if pseudo is not None:
            raise UserError(f"the store root {root.location} is under {pseudo}, whose file system holds no files "
                            "(a pseudo file system such as /proc or /sys): choose another --root; nothing was created")
        raise UserError(
            f"this run would write about {size_text(budget.disk_bytes)} ({budget.states} recorded states) but "
            f"{size_text(disk)} is free under {root.location}: lower train.steps, model.width or data sizes, "
            f"or record every k-th step (record.every=k); nothing was created"
        )
    return budget
