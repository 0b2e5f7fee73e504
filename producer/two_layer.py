"""The built-in two-layer network as a model adapter: its variables, init, step and record.

An adapter tells the producer what a model records (:func:`variables`, with roles, which become the
run's ``schema``), how it starts (:func:`init`), how it takes one optimizer step (:func:`step`) and what
one recorded state holds (:func:`record_values`). The other adapter is :mod:`trajscope.producer.module`
(any ``torch.nn.Module`` trained by the user's own loop, recorded with ``trajscope.ModuleRecorder``).

Variables of a two-layer run:

=========  ==========================  ========  ===========  ======================================
name       dims                        dtype     role         meaning
=========  ==========================  ========  ===========  ======================================
``W``      (step, neuron, feature)     float32   parameter    first-layer weights, row = neuron
``v``      (step, neuron)              float32   parameter    second-layer weights
``loss``   (step,)                     float64   scalar       loss at the recorded state
``output`` (step, sample)              float32   output       network outputs ``f(x_i)``
``X``      (sample, feature)           float32   data         training inputs as used
``y``      (sample,)                   int8      data         labels ±1
``step``   (step,)                     int64     coordinate   optimizer step (0 = init)
``t``      (step,)                     float64   coordinate   gradient-flow time ``step * lr``
=========  ==========================  ========  ===========  ======================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trajscope.store.layout import STEP_DIM, VariableSpec
from trajscope.store.schema import TWO_LAYER, make_schema

if TYPE_CHECKING:  # torch is needed to train, not to describe the variables
    import torch

    from trajscope.producer.config import RunConfig
    from trajscope.producer.model import State, TwoLayerReLU

KIND = TWO_LAYER


def variables(float_dtype: str = "float32") -> dict[str, VariableSpec]:
    """The variables of a two-layer run, keyed by name (``float_dtype`` applies to the weights)."""
    specs = [
        VariableSpec("W", (STEP_DIM, "neuron", "feature"), float_dtype, "parameter"),
        VariableSpec("v", (STEP_DIM, "neuron"), float_dtype, "parameter"),
        VariableSpec("loss", (STEP_DIM,), "float64", "scalar"),
        VariableSpec("output", (STEP_DIM, "sample"), float_dtype, "output"),
        VariableSpec("step", (STEP_DIM,), "int64", "coordinate"),
        VariableSpec("t", (STEP_DIM,), "float64", "coordinate"),
        VariableSpec("X", ("sample", "feature"), float_dtype, "data"),
        VariableSpec("y", ("sample",), "int8", "data"),
    ]
    return {spec.name: spec for spec in specs}


def schema(float_dtype: str = "float32") -> dict[str, Any]:
    """The ``schema`` root attribute of a two-layer run."""
    return make_schema(KIND, variables(float_dtype))


def init(cfg: "RunConfig", dim: int, dtype: "torch.dtype") -> "State":
    """The initial state (small initialization drawn on the CPU from ``cfg.seed``)."""
    from trajscope.producer.model import initialize

    return initialize(cfg.init, cfg.model.width, dim, train_v=cfg.train.train_v, seed=cfg.seed, dtype=dtype)


def step(model: "TwoLayerReLU", state: "State", cfg: "RunConfig", k: int, pre: torch.Tensor, out: torch.Tensor) -> "State":
    """One optimizer step from step ``k`` (see :func:`trajscope.producer.train.gradient_step`)."""
    from trajscope.producer.train import gradient_step

    return gradient_step(model, state, cfg, k, pre, out)


def record_values(state: "State", loss: "torch.Tensor", out: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """What one recorded state holds (the time-varying variables but the coordinates)."""
    return {"W": state.W, "v": state.v, "loss": loss, "output": out}
