"""The torch functions and tensor methods called on this thread, by name: what a test asks of ``record()`` (one
multi-tensor copy a state, numbers as a fill's argument and never an assignment)."""

from __future__ import annotations

from torch.overrides import TorchFunctionMode


class TorchCalls(TorchFunctionMode):
    """``with TorchCalls() as calls: ...`` then ``calls.names``, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))
