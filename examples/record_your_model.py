"""Record your own PyTorch model with trajscope: an MLP and a small CNN on MNIST digits, on the CPU.

    python examples/record_your_model.py                    # both models, 300 steps each, runs in ./runs
    python examples/record_your_model.py --model cnn --steps 500 --root /tmp/runs
    python examples/record_your_model.py --synthetic        # random images instead of MNIST (no data needed)

MNIST comes from trajscope's own offline loader (``$TRAJSCOPE_MNIST_DIR`` with the IDX files, else the
pinned, checksummed wheel it caches; see the README's "MNIST data"). Every parameter is recorded at every
step; at the end the drift from initialization and the stable ranks of every parameter print (a line per
parameter), and a figure of the update sizes is saved next to the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import trajscope
from trajscope.store import StoreRoot
from trajscope.store.run_attrs import delete_run


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def digits(n: int, synthetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images ``(n, 1, 28, 28)`` in [0, 1] and their labels."""
    if synthetic:
        gen = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    from trajscope.producer.mnist import load_mnist_raw

    images, labels, _ = load_mnist_raw("train")
    images = torch.from_numpy(images[:n].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(labels[:n].astype(np.int64))


def train_and_record(model: nn.Module, name: str, x, y, *, steps: int, root: str, batch: int = 128) -> str:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    with trajscope.ModuleRecorder(model, root=root, name=name, expected_steps=steps) as rec:
        rec.record()  # the initial state (step 0)
        for step in range(1, steps + 1):
            rows = torch.randint(0, len(x), (batch,))
            loss = loss_fn(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(loss=loss)  # every parameter after this step, and the loss
    return rec.location


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--root", default="runs")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of MNIST")
    args = parser.parse_args()
    x, y = digits(args.samples, args.synthetic)
    models = {"mlp": MLP, "cnn": SmallCNN}
    for key in ("mlp", "cnn") if args.model == "both" else (args.model,):
        name = f"{key}-{'synthetic' if args.synthetic else 'mnist'}-{args.steps}"
        if StoreRoot(args.root).exists(name):
            delete_run(name, args.root)  # the example overwrites its own run (never someone else's data)
        location = train_and_record(models[key](), name, x, y, steps=args.steps, root=args.root)
        print(f"recorded {location}")

        # the drift and stable ranks at the end, and a plot of the update sizes
        ds = trajscope.open_run(location)
        print("distance from init at the end:", ds.traj.distance_from_init().isel(step=-1).compute().to_pandas())
        print("stable ranks at the end:", ds.traj.param_stable_ranks().isel(step=-1).compute().to_pandas())
        ds.traj.plot("param_updates").savefig(Path(args.root) / f"{name}-updates.png")
        print(f"figure: {Path(args.root) / f'{name}-updates.png'}")


if __name__ == "__main__":
    main()
