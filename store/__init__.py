"""trajscope.store: the on-disk contract of a run (layout, codecs, writer, commit protocol, catalog).

Only this package knows paths, chunk shapes, codecs and the commit protocol.
"""

from trajscope.store.errors import RunLocked, RunNotFound, UserError
from trajscope.store.layout import COMMITTED, VariableSpec, two_layer_variables, validate_run_id
from trajscope.store.locks import WriterLock
from trajscope.store.reader import RunInfo, describe_run, list_runs, open_run
from trajscope.store.root import StoreRoot, resolve_run
from trajscope.store.writer import RunWriter

__all__ = [
    "COMMITTED",
    "RunInfo",
    "RunLocked",
    "RunNotFound",
    "RunWriter",
    "StoreRoot",
    "UserError",
    "VariableSpec",
    "WriterLock",
    "describe_run",
    "list_runs",
    "open_run",
    "resolve_run",
    "two_layer_variables",
    "validate_run_id",
]
