"""Errors shared across trajscope (defined in :mod:`trajscope.store.errors`)."""

from trajscope.store.errors import RunLocked, RunNotFound, UserError

__all__ = ["RunLocked", "RunNotFound", "UserError"]
