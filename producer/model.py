"""The two-layer bias-free ReLU network, its small initializations, losses and exact gradients.

``f(x; W, v) = Σ_j v_j σ(<w_j, x>)``, ``σ(z) = max(z, 0)``, ``σ'(0) = 0``;
``L = R Σ_i ℓ(y_i f(x_i))`` with ``ℓ(z) = exp(-z)`` or ``log(1 + exp(-z))`` and ``R = 1`` or ``1/n``.

The gradients are written out (no autograd): with ``g_i = R y_i ℓ'(y_i f(x_i))`` and the activation
pattern ``a_ij = 1[<x_i, w_j> > 0]``,

* ``∂L/∂v_j = Σ_i g_i σ(<w_j, x_i>)``
* ``∂L/∂w_j = v_j Σ_i g_i a_ij x_i``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trajscope.producer.config import InitConfig, LossConfig


@dataclass
class State:
    """Parameters at one step."""

    W: torch.Tensor  # (h, D)
    v: torch.Tensor  # (h,)


def initialize(init: InitConfig, width: int, dim: int, *, train_v: bool, seed: int, dtype: torch.dtype) -> State:
    """Small initialization, drawn on the CPU from ``seed`` (identical on every device).

    * ``balanced``: ``W = ε W0``, ``[W0]_jk ~ N(0, 1/D)``, ``v_j = s_j ||w_j||``, ``s_j = ±1`` w.p. 1/2.
    * ``gaussian``: ``[W]_jk, v_j ~ N(0, α²)``.
    * ``train_v = False`` (train ``W`` only): ``v_j = s_j`` fixed at ±1.
    """
    gen = torch.Generator().manual_seed(int(seed))
    signs = torch.where(torch.rand(width, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    if init.kind == "balanced":
        W = init.scale * torch.randn(width, dim, generator=gen, dtype=torch.float64) / dim**0.5
        v = signs * W.norm(dim=1)
    else:
        W = init.scale * torch.randn(width, dim, generator=gen, dtype=torch.float64)
        v = init.scale * torch.randn(width, generator=gen, dtype=torch.float64)
    if not train_v:
        v = signs.clone()
    return State(W=W.to(dtype), v=v.to(dtype))


def loss_terms(margins: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``ℓ(z)`` and ``ℓ'(z)`` at the margins ``z_i = y_i f(x_i)``."""
    if kind == "exp":
        value = torch.exp(-margins)
        return value, -value
    value = torch.nn.functional.softplus(-margins)
    return value, -torch.sigmoid(-margins)


class TwoLayerReLU:
    """Forward pass, loss and gradient of the network on a fixed dataset ``X`` (n, D), ``y`` (n,)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, loss: LossConfig):
        self.X = X
        self.y = y
        self.loss = loss
        self.n = X.shape[0]

    def forward(self, state: State, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations ``<x_i, w_j>`` (n, h) and outputs ``f(x_i)`` (n,) on all (or ``rows`` of) the data."""
        X = self.X if rows is None else self.X[rows]
        pre = X @ state.W.T
        return pre, torch.relu(pre) @ state.v

    def loss_value(self, outputs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``L = R Σ_i ℓ(y_i f(x_i))`` as a 0-d tensor (no host sync)."""
        y = self.y if rows is None else self.y[rows]
        value, _ = loss_terms(y * outputs, self.loss.kind)
        total = value.sum(dtype=torch.float64)
        return total / self.n if self.loss.reduction == "mean" else total

    def gradient(self, state: State, pre: torch.Tensor, outputs: torch.Tensor,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∂L/∂W, ∂L/∂v)`` from a forward pass; with ``rows`` an unbiased minibatch estimate.

        The minibatch estimate rescales the batch sum by ``n / |B|`` so it estimates the full gradient
        under either reduction.
        """
        X = self.X if rows is None else self.X[rows]
        y = self.y if rows is None else self.y[rows]
        _, slope = loss_terms(y * outputs, self.loss.kind)
        scale = 1.0 / self.n if self.loss.reduction == "mean" else 1.0
        if rows is not None:
            scale *= self.n / X.shape[0]
        g = scale * y * slope  # (n,)
        active = (pre > 0).to(pre.dtype)
        grad_v = torch.relu(pre).T @ g
        grad_W = state.v[:, None] * ((active * g[:, None]).T @ X)
        return grad_W, grad_v
