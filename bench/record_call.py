"""The GPU's ``record()`` call: one copy launch a state against one launch per dtype, side by side.

Times :meth:`Recorder.record` on the row path a GPU takes (torch rows, ``torch._foreach_copy_``) for the
reference state (``W`` 100 × 784 and ``v``, ``output`` float32, a float64 ``loss``), with no training and a
writer that discards the chunks, so only the call is measured. Two variants, interleaved in every repeat:

- **one launch a state** (the default, :func:`~trajscope.producer.staging.copy_carrier`): the float64 loss
  goes into the float32 copy as two float32;
- **one launch per dtype** (the carrier switched off, as before commit 7ad6c09): a second launch for the loss.

``--device cuda`` measures the launches themselves. On the CPU, torch CPU tensors stand in for the device's
(the CPU's ``_foreach_copy_`` copies tensor by tensor either way), so only the Python around the copy shows.
``--state tiny`` records the same four variables at 4 × 3, 4, 5 values: only the Python and the dispatch
remain. Reports the median µs a call over the calls that hand no chunk over (the median over the repeats),
and the ratio of the two.

    python bench/record_call.py [--device cpu|cuda] [--state reference|tiny] [--calls 5000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trajscope.producer import recorder as recorder_module
from trajscope.producer.recorder import Recorder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_overhead import DiscardingWriter  # noqa: E402

#: (h, D, n) of the states: the reference run's, and a tiny one
SIZES = {"reference": (100, 784, 1000), "tiny": (4, 3, 5)}
SHAPES: dict[str, tuple[int, ...]] = {}
DTYPES = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
CHUNK = 26  # the reference run's chunk (8 MiB of W)


def use_state(name: str) -> None:
    """Set the recorded variables' shapes (module global ``SHAPES``) to a state's."""
    h, dim, n = SIZES[name]
    SHAPES.clear()
    SHAPES.update({"W": (h, dim), "v": (h,), "loss": (), "output": (n,)})


def per_call_us(device: torch.device, calls: int, one_launch: bool) -> float:
    """Median µs of a ``record()`` call that hands no chunk over."""
    carrier = recorder_module.copy_carrier
    if not one_launch:
        recorder_module.copy_carrier = lambda shapes, dtypes: (None, {})
    try:
        recorder = Recorder(DiscardingWriter(CHUNK, "buffered"), SHAPES, DTYPES, device, buffers=3)
    finally:
        recorder_module.copy_carrier = carrier
    assert not recorder._numpy_rows, "the GPU's row path (torch rows) was not taken"
    gen = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=gen, dtype=DTYPES[name]).to(device) for name, shape in SHAPES.items()}
    for _ in range(4 * CHUNK):  # warm: the slots' first use, the allocator, the kernels' first launch
        recorder.record(**state)
    times = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for k in range(calls):
        started = clock()
        recorder.record(**state)
        times[k] = clock() - started
    recorder.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    handing = (np.arange(4 * CHUNK, 4 * CHUNK + calls) % CHUNK) == CHUNK - 1
    return float(np.median(times[~handing])) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--state", default="reference", choices=sorted(SIZES))
    args = parser.parse_args()
    use_state(args.state)
    device = torch.device(args.device)
    if device.type == "cpu":  # the GPU's torch rows, with CPU tensors standing in
        recorder_module._NUMPY_DTYPES = set()
    torch.set_num_threads(1)
    variants = {"one launch a state": True, "one launch per dtype": False}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
        for name in order:
            results[name].append(per_call_us(device, args.calls, variants[name]))
    per_dtype = results["one launch per dtype"]
    print("| variant | µs a call (median of repeats) | min | max | × one launch per dtype (median of repeats) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        ratios = [v / b for v, b in zip(values, per_dtype)]
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{statistics.median(ratios):.3f} |")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (torch CPU tensors for the device's)"
    print(f"\n`record()` of the {args.state} state on {where}, torch {torch.__version__}: {args.calls} calls a run, "
          f"{args.repeats} interleaved repeats, the calls that hand a chunk over left out")


if __name__ == "__main__":
    main()
