"""Errors shared across trajscope (defined in :mod:`trajscope.store.errors`)."""

from trajscope.store.errors import RunFailed, RunLocked, RunNotFound, UserError

__all__ = ["RunFailed", "RunLocked", "RunNotFound", "UserError"]
