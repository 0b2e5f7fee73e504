"""The generic model adapter: the variables of any ``torch.nn.Module`` and what one state holds.

Naming (the run's contract for module runs):

* a parameter or buffer keeps its ``named_parameters()``/``named_buffers()`` name, dots included:
  ``fc1.weight``, ``layers.0.bias``, ``bn.running_mean``;
* axis ``i`` of a tensor ``NAME`` is the dimension ``NAME.dim{i}`` — ``fc1.weight`` has dims
  ``(step, fc1.weight.dim0, fc1.weight.dim1)``: for ``nn.Linear`` ``dim0`` is the output unit (row =
  neuron) and ``dim1`` the input; for ``nn.Conv2d`` ``(out_channel, in_channel, kh, kw)``. No such name
  can clash with a variable: ``fc1.weight.dim0`` would need ``fc1.weight`` to be a module;
* the gradient of ``NAME`` (option ``gradients=True``) is ``NAME.grad`` and shares ``NAME``'s dims;
* an extra passed to ``record(name=value)`` is ``name``: a scalar has dims ``(step,)`` (float64), a tensor
  ``(step, name.dim0, ...)`` unless ``dims={"name": ("sample", "class")}`` names them;
* ``step`` (int64) is the coordinate: the number of ``record()`` calls before this state (0 = initial).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from trajscope.store.errors import UserError
from trajscope.store.layout import STEP_DIM, VariableSpec, validate_variable_name
from trajscope.store.schema import MODULE, make_schema

KIND = MODULE
RESERVED = ("step", "t")

#: torch dtype → (stored dtype, dtype of the recording buffer)
_DTYPES: dict[torch.dtype, tuple[str, torch.dtype]] = {
    torch.float64: ("float64", torch.float64),
    torch.float32: ("float32", torch.float32),
    torch.float16: ("float16", torch.float16),
    torch.bfloat16: ("float32", torch.float32),  # zarr has no bfloat16: stored exactly as float32
    torch.int64: ("int64", torch.int64),
    torch.int32: ("int32", torch.int32),
    torch.int16: ("int16", torch.int16),
    torch.int8: ("int8", torch.int8),
    torch.uint8: ("uint8", torch.uint8),
    torch.bool: ("bool", torch.bool),
}


def axis_dims(name: str, ndim: int) -> tuple[str, ...]:
    """The dims of one state of tensor ``name``: ``(name.dim0, name.dim1, ...)``."""
    return tuple(f"{name}.dim{i}" for i in range(ndim))


def stored_dtype(dtype: torch.dtype) -> tuple[str, torch.dtype]:
    """``(stored numpy dtype name, recording buffer torch dtype)`` for a tensor of ``dtype``."""
    if dtype not in _DTYPES:
        raise TypeError(f"cannot record tensors of dtype {dtype}: use a real floating, integer or bool dtype")
    return _DTYPES[dtype]


def fill_for(dtype: torch.dtype) -> float | int | bool:
    """What a state holds for a tensor that was not given (a gradient before the first backward)."""
    return math.nan if dtype.is_floating_point else (False if dtype == torch.bool else 0)


def select(named: Iterable[tuple[str, torch.Tensor]], patterns: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """The tensors whose name matches one of the ``fnmatch`` ``patterns`` (all when ``None``)."""
    out = {}
    for name, tensor in named:
        if patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out[name] = tensor
    return out


def patterns_of(option: str, value: Any) -> list[str] | None:
    """``parameters=`` / ``buffers=`` patterns as a list (``None``: all); a bare string, which would be
    read as its characters, is a :class:`UserError`."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(p, str) for p in value):
        raise UserError(f"{option}={value!r}: give a list of fnmatch patterns, e.g. {option}=[{str(value)!r}]")
    return list(value)


def tracked(module: torch.nn.Module, parameters: Sequence[str] | None, buffers: bool | Sequence[str],
            gradients: bool) -> dict[str, tuple[str, torch.Tensor]]:
    """Name → (role, tensor) of everything recorded from ``module`` (gradients are read at record time).

    A pattern that matches nothing is a :class:`UserError` naming what there is; so is a tensor named like
    a coordinate of the run (:data:`RESERVED`: a parameter or buffer ``step`` at the top of the module)."""
    params = select(module.named_parameters(), patterns_of("parameters", parameters))
    if parameters is not None and not params:
        names = ", ".join(n for n, _ in module.named_parameters()) or "none"
        raise UserError(f"no parameter matches {list(parameters)}: the module's parameters are {names}")
    out: dict[str, tuple[str, torch.Tensor]] = {n: ("parameter", p) for n, p in params.items()}
    if buffers:
        patterns = None if buffers is True else patterns_of("buffers", buffers)
        found = select(module.named_buffers(), patterns)
        if patterns is not None and not found:
            names = ", ".join(n for n, _ in module.named_buffers()) or "none"
            raise UserError(f"no buffer matches {patterns}: the module's buffers are {names}")
        # a buffer of a dtype the store cannot hold (float8, complex): refused where patterns name it, said where
        # buffers=True takes every buffer (found by a review: dropped without a word, even when named)
        unstorable = {n: b.dtype for n, b in found.items() if b.dtype not in _DTYPES}
        listed = ", ".join(f"{n!r} ({d})" for n, d in unstorable.items())
        if patterns is not None and unstorable:
            raise UserError(f"buffer(s) {listed} matched by buffers={patterns} cannot be recorded: use a real "
                            "floating, integer or bool dtype, or leave them out with patterns that do not match them")
        if unstorable:
            warnings.warn(f"buffer(s) {listed} cannot be recorded (not a real floating, integer or bool dtype): "
                          "left out", stacklevel=3)
        out.update({n: ("buffer", b) for n, b in found.items() if n not in unstorable})
    for name, (role, tensor) in out.items():
        # a lazy module before its first forward (found by a review: torch's own error came out of the constructor)
        if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
            raise UserError(f"the module's {role} {name!r} is not initialized yet (a lazy module, nn.LazyLinear, "
                            "before its first forward pass): run one forward pass first, then make the ModuleRecorder")
        if tensor.device.type == "meta":  # (found by a review: refused only at close(), after a run was made)
            raise UserError(f"the module's {role} {name!r} is on the meta device (no values): materialize the model "
                            "first (model.to_empty(device=...) and initialize it)")
        # refused when the recorder is made (found by a review: a complex parameter raised a bare TypeError at the
        # second record(), and again from the `with` block's exit)
        if role == "parameter" and tensor.dtype not in _DTYPES:
            raise UserError(f"the module's parameter {name!r} is {tensor.dtype}, which cannot be recorded: use a real "
                            "floating, integer or bool dtype, or leave it out with parameters=[...] patterns that do "
                            "not match it")
    for name, (role, _) in out.items():
        option = "parameters" if role == "parameter" else "buffers"
        if name in RESERVED:
            raise UserError(f"the module's {role} {name!r} has the name of the run's {name!r} coordinate: rename it, "
                            f"or leave it out with {option}=[...] patterns that do not match it")
        why = ("is longer than 128 characters (its submodules' names, deeply nested)" if len(name) > 128
               else "is named by its submodules' names (an nn.ModuleDict key with a space, say)")
        validate_variable_name(name, f"the module's {role} {name!r} {why}: rename them, or leave it out with "
                               f"{option}=[...] patterns that do not match it")
    if gradients:
        for n, p in params.items():
            out[validate_variable_name(f"{n}.grad", f"the gradient of {n!r} cannot be stored under that name: "
                                                    "rename the parameter, or record with gradients=False")] = ("gradient", p)
    return out


def holder(name: str, role: str) -> tuple[str, str, str]:
    """Where tracked tensor ``name`` lives: ``(submodule path, table, key)``, the table being the submodule's
    ``_parameters`` (a gradient's parameter too) or ``_buffers``. A tensor assigned to the module after the
    recorder was made (``load_state_dict(..., assign=True)``, a new ``nn.Parameter``, tied weights, a whole
    submodule replaced) is found there, which is how the recorder sees it."""
    base = name[: -len(".grad")] if role == "gradient" else name
    path, _, key = base.rpartition(".")
    return path, ("_buffers" if role == "buffer" else "_parameters"), key


def held(module: torch.nn.Module, where: tuple[str, str, str], owners: dict[str, Any]) -> torch.Tensor | None:
    """The tensor ``module`` holds at ``where`` (:func:`holder`) now, ``None`` if none; ``owners`` caches the
    submodules looked up in one pass."""
    path, table, key = where
    owner = owners.get(path)
    if owner is None:
        try:
            owner = owners[path] = module.get_submodule(path) if path else module
        except AttributeError:  # (the submodule itself is gone)
            return None
    return getattr(owner, table).get(key)


def check_dims_option(dims: Any) -> dict[str, tuple[str, ...]]:
    """``dims={"extra": ("sample", "class")}`` checked: each value a sequence of distinct names, none of them
    ``step`` (the run's time dim); a bare string (read as its characters) is a :class:`UserError`."""
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise UserError(f"dims={dims!r}: give a dict of extra name → dim names, e.g. dims={{'logits': ('sample', 'class')}}")
    out = {}
    for name, names in dims.items():
        if isinstance(names, str) or not all(isinstance(d, str) and d for d in names):
            raise UserError(f"dims[{name!r}]={names!r}: give a tuple of dim names, e.g. ({str(names)!r},)")
        names = tuple(names)
        if STEP_DIM in names:
            raise UserError(f"dims[{name!r}] names {STEP_DIM!r}, the run's time dim, which every variable has first: "
                            f"name only the tensor's own axes")
        if len(set(names)) != len(names):
            raise UserError(f"dims[{name!r}]={names!r} names a dim twice: give each axis its own name")
        out[name] = names
    return out


def variables(tracked_tensors: Mapping[str, tuple[str, torch.Tensor]], extras: Mapping[str, torch.Tensor],
              extra_dims: Mapping[str, Sequence[str]] | None = None) -> dict[str, VariableSpec]:
    """The run's variables: ``step``, every tracked tensor, every extra (see the module docstring)."""
    extra_dims = dict(extra_dims or {})
    specs = {"step": VariableSpec("step", (STEP_DIM,), "int64", "coordinate")}
    for name, (role, tensor) in tracked_tensors.items():
        base = name[: -len(".grad")] if role == "gradient" else name
        specs[name] = VariableSpec(name, (STEP_DIM, *axis_dims(base, tensor.ndim)), stored_dtype(tensor.dtype)[0], role)
    for name, value in extras.items():
        validate_variable_name(name, f"record({name}=...): rename the extra")
        if name in specs or name in RESERVED:
            raise UserError(f"record({name}=...) clashes with a recorded variable: rename the extra")
        if value.ndim == 0:
            specs[name] = VariableSpec(name, (STEP_DIM,), "float64", "scalar")
            continue
        dims = tuple(extra_dims.get(name) or axis_dims(name, value.ndim))
        if len(dims) != value.ndim:
            raise UserError(f"dims for {name!r} name {len(dims)} axes; the tensor has {value.ndim}")
        specs[name] = VariableSpec(name, (STEP_DIM, *dims), stored_dtype(value.dtype)[0], "tensor")
    dim_names = {d for spec in specs.values() for d in spec.dims[1:]}
    clash = sorted(dim_names & set(specs))
    if clash:  # xarray would read the variable as that dim's coordinate
        raise UserError(f"{clash[0]!r} is both a variable and a dim of the run: rename the extra or the dim (dims=...)")
    return specs


def schema(specs: Mapping[str, VariableSpec]) -> dict[str, Any]:
    """The ``schema`` root attribute of a module run."""
    return make_schema(KIND, specs)


def as_tensor(value: Any) -> torch.Tensor:
    """An extra as a detached tensor (Python numbers become float64 scalars)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (bool, int, float, np.floating, np.integer)):
        return torch.tensor(float(value), dtype=torch.float64)
    return torch.as_tensor(np.asarray(value))
