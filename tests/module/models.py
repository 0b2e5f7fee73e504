"""Small models and data for the module-recording tests (synthetic data: fast, no files)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A 3-layer MLP."""

    def __init__(self, d_in: int = 12, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class SmallCNN(nn.Module):
    """Two convolutions (one with BatchNorm) and a linear head on 8×8 single-channel images."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6 * 2 * 2, classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def data(n: int = 64, shape=(12,), classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def train(model, x, y, steps, rec=None, *, lr=0.05, start=1, copies=None, stop_after=None):
    """Full-batch SGD; records with ``rec`` after each step; ``copies`` collects synchronous copies."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(start, steps + 1):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.record(loss=loss)
        if copies is not None:
            copies.append({n: p.detach().clone() for n, p in model.named_parameters()} | {"loss": loss.item()})
        if stop_after is not None and step == stop_after:
            return


def record_training(model, x, y, steps, *, root, name, lr=0.05, **recorder_options):
    """Record the initial state and ``steps`` steps of :func:`train` into run ``name`` under ``root``."""
    import trajscope

    with trajscope.ModuleRecorder(model, root=root, name=name, **recorder_options) as rec:
        rec.record()
        train(model, x, y, steps, rec, lr=lr)
