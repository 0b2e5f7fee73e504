"""Unique names for the tasks dask fuses (a guard against a dask bug that returned wrong numbers).

dask's low-level optimization (``dask._task_spec.fuse_linear_task_spec``, dask 2026.8) fuses linear chains of
tasks and names each fused task with ``dask.optimization.default_fused_keys_renamer``: the names of the chain
joined, cut to 115 characters, and a 4-hex-digit hash of the whole appended. Two chains whose joined names share
their first 115 characters differ only by that hash: 65 536 values, so among a few hundred chains two collide
about every other time, and dask then computes one task for both: one variable's result stands in for another's.
Found by a review: ``spectral_norms`` of a module run of 300 ``Linear(2, 2)`` layers (plain ``xr.open_zarr`` too)
returned, in about half the runs, another layer's norms for one or two layers.

The fusion looks the renamer up on :mod:`dask.optimization` each time and passes no length (the config
``optimization.fuse.rename-keys`` is not consulted there), so :func:`install` replaces that module attribute by
the same function with no cut (``max_fused_key_length=None``): names as unique as the keys they join. Only names
change, not what is computed. ``tests/analysis/test_dask_keys.py`` checks that dask still fuses through it.
"""

from __future__ import annotations

import functools

import dask.optimization

#: dask's renamer as it was imported (with its cut)
dask_renamer = dask.optimization.default_fused_keys_renamer

#: the renamer installed: dask's own, with no cut
whole_fused_names = functools.partial(dask_renamer, max_fused_key_length=None)


def install() -> None:
    """Make dask name fused tasks with :data:`whole_fused_names` (idempotent)."""
    dask.optimization.default_fused_keys_renamer = whole_fused_names
