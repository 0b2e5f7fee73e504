"""trajscope.producer: configs, datasets, the model, the training loop and the recorder pipeline.

Names are imported lazily, so reading a config (``trajscope config``, config errors) does not load torch.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "RunConfig": "config",
    "load_config": "config",
    "ModuleRecorder": "module_recorder",
    "Recorder": "recorder",
    "RunResult": "train",
    "produce": "train",
    "recording_schedule": "train",
    "resume": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"trajscope.producer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trajscope.producer' has no attribute {name!r}")
