"""trajscope.store: the on-disk contract of a run (layout, codecs, writer, commit protocol, catalog).

Only this package knows paths, chunk shapes, codecs and the commit protocol.
"""

from trajscope.store.dataset_attrs import decode_attrs, run_attr
from trajscope.store.errors import CorruptChunk, CorruptData, RunLocked, RunNotFound, UserError
from trajscope.store.layout import COMMITTED, VariableSpec, validate_run_id
from trajscope.store.locks import WriterLock
from trajscope.store.reader import RunInfo, describe_run, list_runs, open_run
from trajscope.store.root import StoreRoot, resolve_run
from trajscope.store.schema import make_schema, read_schema
from trajscope.store.writer import RunWriter

__all__ = [
    "COMMITTED",
    "CorruptChunk",
    "CorruptData",
    "RunInfo",
    "RunLocked",
    "RunNotFound",
    "RunWriter",
    "StoreRoot",
    "UserError",
    "VariableSpec",
    "WriterLock",
    "decode_attrs",
    "describe_run",
    "list_runs",
    "make_schema",
    "open_run",
    "read_schema",
    "resolve_run",
    "run_attr",
    "validate_run_id",
]


def __getattr__(name: str):
    if name == "two_layer_variables":  # moved out: the store knows no model
        raise AttributeError("trajscope.store.two_layer_variables moved to "
                             "trajscope.producer.two_layer.variables (the store knows no model)")
    raise AttributeError(f"module 'trajscope.store' has no attribute {name!r}")
