"""Benchmark: the memory a ``ModuleRecorder`` holds for a model of many tiny tensors, with each chunk buffer keeping
a view of every variable's row at every position (as before ``MAX_KEPT_ROW_VIEWS``) against the views made per
recorded state (now, beyond that many views).

    python bench/module_memory.py [--layers 500] [--steps 30]

Each variant runs in a fresh process: a ``Sequential`` of ``--layers`` ``Linear(2, 2)`` (two tensors each), trained
``--steps`` steps with SGD and recorded every step into a temporary root. Prints the growth of the process's peak
RSS over its state before the recorder, the seconds, and the ratio of the two growths.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time, torch, trajscope
from trajscope.producer import recorder
layers, steps, root, keep = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "kept"
if keep:
    recorder.MAX_KEPT_ROW_VIEWS = 10**12
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(layers)])
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(8, 2), torch.randn(8, 2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
with trajscope.ModuleRecorder(model, root=root, name="m") as rec:
    rec.record()
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        rec.record(loss=loss)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"mib": grown, "seconds": time.perf_counter() - began}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=500)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    results = {}
    for variant in ("kept", "made per state"):
        with tempfile.TemporaryDirectory() as root:
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.layers), str(args.steps), root,
                                  "kept" if variant == "kept" else "made"], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"ModuleRecorder, {args.layers} Linear(2, 2) ({2 * args.layers} tensors), {args.steps} steps")
    print(f"{'row views':<16} {'peak RSS growth MiB':>20} {'seconds':>8}")
    for variant, r in results.items():
        print(f"{variant:<16} {r['mib']:>20.1f} {r['seconds']:>8.1f}")
    print(f"growth now / kept views: {results['made per state']['mib'] / results['kept']['mib']:.3f}")


if __name__ == "__main__":
    main()
