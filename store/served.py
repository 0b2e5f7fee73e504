"""The local file behind a served chunk key, for responses that stream a file (with byte ranges)
instead of reading the chunk into memory.

Same checks as :func:`trajscope.store.snapshot.read_key` — the key is in the layout, its real path
stays under the root (no symlink out), and the chunk's first state is committed — then the *real*
path of the file is returned, so the caller opens exactly the file that was checked.
"""

from __future__ import annotations

import json
import os

from trajscope.store.layout import COMMITTED, STEP_DIM
from trajscope.store.root import StoreRoot
from trajscope.store.snapshot import METADATA_KEY, KeyInfo, KeyNotServed, _check_inside, _chunk_steps, parse_key


def chunk_file(root: StoreRoot, run_id: str, key: str, info: KeyInfo | None = None) -> str | None:
    """Real path of the committed chunk file ``key`` of a run on a local root.

    ``None`` when the root is not local or ``key`` is not a chunk (serve it with ``read_key``);
    :class:`KeyError` when the chunk is not stored or not committed; :class:`KeyNotServed` when the
    key is malformed or resolves outside the root.
    """
    info = info or parse_key(key)
    if not root.is_local or info.kind != "chunk":
        return None
    _check_inside(root, run_id, key)
    committed = int(root.read_attrs(run_id).get(COMMITTED, 0))  # fresh, before the array metadata
    meta = json.loads(root.read_bytes(run_id, f"{info.array}/{METADATA_KEY}"))
    if meta.get("node_type") != "array":
        raise KeyError(key)
    if len(info.chunk) != len(meta.get("shape", ())):
        raise KeyNotServed(f"chunk key {key!r} has {len(info.chunk)} indices; array {info.array!r} has "
                           f"{len(meta.get('shape', ()))} dimensions")
    dims = meta.get("dimension_names") or []
    if dims and dims[0] == STEP_DIM:
        steps = _chunk_steps(meta)
        if steps is not None and info.chunk[0] * steps >= committed:
            raise KeyError(key)
    path = os.path.realpath(os.path.join(root.run_url(run_id), key))
    _check_inside(root, run_id, key)  # again, next to the use: a link planted meanwhile is refused
    if not os.path.isfile(path):
        raise KeyError(key)
    return path
