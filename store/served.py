"""The local file behind a served chunk key, opened for a response that reads only a byte range of it.

Same checks as :func:`trajscope.store.snapshot.read_key` — the key is in the layout, the file stays under
the root (no symlink out), and the chunk's first state is committed — then the file is *opened* by
:func:`trajscope.store.safe.open_inside` (component by component, ``O_NOFOLLOW``) and the descriptor is
returned: the caller reads exactly the file that was checked, and a link swapped in between the check
and the read is never followed (a path returned instead would leave that gap).
"""

from __future__ import annotations

import os

from trajscope.store.layout import COMMITTED, STEP_DIM
from trajscope.store.root import StoreRoot
from trajscope.store.safe import open_inside
from trajscope.store.snapshot import (KeyInfo, KeyNotServed, LostChunkCheck, _check_inside, _chunk_steps,
                                      parse_key, read_array_metadata)


def open_chunk_file(root: StoreRoot, run_id: str, key: str, info: KeyInfo | None = None) -> int | None:
    """A read-only descriptor of the committed chunk file ``key`` of a run on a local root (close it).

    ``None`` when the root is not local or ``key`` is not a chunk (serve it with ``read_key``);
    :class:`KeyError` when the chunk is not stored or not committed; :class:`KeyNotServed` when the
    key is malformed or resolves outside the root.
    """
    info = info or parse_key(key)
    if not root.is_local or info.kind != "chunk":
        return None
    _check_inside(root, run_id, key)
    attrs = root.read_attrs(run_id)  # fresh, before the array metadata
    committed = int(attrs.get(COMMITTED, 0))
    meta = read_array_metadata(root, run_id, info.array)
    if len(info.chunk) != len(meta.get("shape", ())):
        raise KeyNotServed(f"chunk key {key!r} has {len(info.chunk)} indices; array {info.array!r} has "
                           f"{len(meta.get('shape', ()))} dimensions")
    dims = meta.get("dimension_names") or []
    if dims and dims[0] == STEP_DIM:
        steps = _chunk_steps(meta)
        if steps is not None and info.chunk[0] * steps >= committed:
            raise KeyError(key)
    try:  # PathOutsideRoot passes through, as from the check above
        return open_inside(root.location, os.path.join(root.run_url(run_id), key), f"key {key!r} of run {run_id!r}")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        LostChunkCheck(root, run_id, attrs, {info.array: meta})(key)  # committed: corrupt, not absent
        raise KeyError(key) from None
