"""The run schema: which model wrote a run and what each variable is, stored in the root attributes.

``attrs["schema"]`` is a plain JSON document::

    {"version": 1, "kind": "module",
     "variables": {"fc1.weight": {"dims": ["step", "fc1.weight.dim0", "fc1.weight.dim1"],
                                  "dtype": "float32", "role": "parameter"}, ...}}

``kind`` names the model adapter (``two_layer`` for the built-in network, ``module`` for any
``torch.nn.Module`` recorded with ``trajscope.ModuleRecorder``); ``role`` is one of :data:`ROLES`.
The store writes and reads the document but never interprets a kind. Readers use
:func:`read_schema`; runs written before the schema existed are read as ``two_layer`` runs, their
roles derived from the dims (``step`` only: scalar; ``step`` and ``sample``: output; other
time-varying: parameter; no ``step``: data).
"""

from __future__ import annotations

from typing import Any, Mapping

from trajscope.store.dataset_attrs import run_attr
from trajscope.store.layout import STEP_DIM, VariableSpec

SCHEMA_VERSION = 1
SCHEMA_ATTR = "schema"

#: roles of a variable: a trained tensor, a buffer (e.g. running statistics), a gradient, a scalar per
#: state (loss), a per-sample output, another recorded tensor (user extra), a static data array, the
#: coordinates of the recorded states
ROLES = ("parameter", "buffer", "gradient", "scalar", "output", "tensor", "data", "coordinate")

#: model kinds written by trajscope's own adapters (others may be added by other adapters)
TWO_LAYER = "two_layer"
MODULE = "module"


def make_schema(kind: str, variables: Mapping[str, VariableSpec]) -> dict[str, Any]:
    """The ``schema`` attribute for a run of model ``kind`` with ``variables`` (roles must be set)."""
    out = {}
    for name, spec in variables.items():
        if spec.role not in ROLES:
            raise ValueError(f"variable {name!r} has role {spec.role!r}: use one of {', '.join(ROLES)}")
        out[name] = {"dims": list(spec.dims), "dtype": spec.dtype, "role": spec.role}
    return {"version": SCHEMA_VERSION, "kind": str(kind), "variables": out}


def _legacy_role(name: str, dims: tuple[str, ...]) -> str:
    if name in ("step", "t"):
        return "coordinate"
    if not dims or dims[0] != STEP_DIM:
        return "data"
    if len(dims) == 1:
        return "scalar"
    if "sample" in dims[1:]:
        return "output"
    return "parameter"


def is_module_run(attrs: Mapping[str, Any]) -> bool:
    """True for a run recorded by ``ModuleRecorder`` (its script resumes it, not ``trajscope resume``)."""
    schema = run_attr(attrs, SCHEMA_ATTR)
    return isinstance(schema, Mapping) and schema.get("kind") == MODULE


def read_schema(attrs: Mapping[str, Any], dims: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The run's schema from its root ``attrs``; for a run without one, a ``two_layer`` schema derived
    from ``dims`` (variable name → dims, e.g. ``{n: v.dims for n, v in ds.variables.items()}``)."""
    schema = run_attr(attrs, SCHEMA_ATTR)
    if isinstance(schema, Mapping) and "kind" in schema:
        return dict(schema)
    variables = {str(n): {"dims": list(d), "dtype": "", "role": _legacy_role(str(n), tuple(d))}
                 for n, d in (dims or {}).items()}
    return {"version": 0, "kind": TWO_LAYER, "variables": variables}


def names_with_role(schema: Mapping[str, Any], *roles: str) -> list[str]:
    """Variables of ``schema`` whose role is one of ``roles``, in schema order."""
    return [n for n, v in schema.get("variables", {}).items() if v.get("role") in roles]
