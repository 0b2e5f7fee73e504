"""Editing a run after the fact: its user labels (tags, a note), and deleting it.

The writer of a run keeps the run's root attributes in memory and rewrites them whole at every commit,
so an edit made beside a live writer would be lost at its next commit, or would clobber it. Every
function here therefore takes the run's writer lock first (:class:`~trajscope.store.locks.WriterLock`):
a run that is being written is refused with the holder named, and no writer can start while the edit
lasts. The group's ``zarr.json`` is then read fresh, its ``attributes`` changed and the whole document
written back in one atomic write, so a finished run keeps its consolidated metadata.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable

from trajscope.store.dataset_attrs import JSON_ATTRS, run_attr
from trajscope.store.errors import NotARun, UserError
from trajscope.store.layout import RUN_UID
from trajscope.store.locks import WriterLock
from trajscope.store.root import StoreRoot, resolve_run

TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+-]{0,63}")


def validate_tag(tag: str) -> str:
    """A tag is 1–64 characters: letters, digits and ``. _ : = + -``, starting with a letter or digit."""
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        shown = repr(tag) if not isinstance(tag, str) or len(tag) <= 80 else f"{tag[:80]!r}... ({len(tag)} characters)"
        raise UserError(f"invalid tag {shown}: use 1-64 letters, digits or . _ : = + - (e.g. baseline, lr=0.01)")
    return tag


def labels(tags: Iterable[str] | None = None, note: str | None = None) -> dict[str, Any]:
    """The attributes a run is created with when the user labels it at ``produce`` time."""
    out: dict[str, Any] = {}
    if tags:
        out["tags"] = sorted({validate_tag(t) for t in tags})
    if note is not None:
        out["note"] = str(note)
    return out


def edit_attrs(
    run: str | os.PathLike,
    root: str | os.PathLike | StoreRoot | None,
    change: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Apply ``change`` (which edits the attribute dict in place) to a run that is not being written.

    Raises :class:`~trajscope.store.errors.RunLocked` while a writer holds the run and
    :class:`~trajscope.store.errors.RunNotFound` when there is no such run. Returns the new attributes.
    """
    store_root, run_id = resolve_run(run, root)
    store_root.read_group_metadata(run_id)  # RunNotFound before a lock file is made for a typo
    with WriterLock(store_root, run_id, purpose="editing"):
        document = store_root.read_group_metadata(run_id)  # fresh, under the lock
        attrs = document.setdefault("attributes", {})
        if store_root.is_foreign(run_id, attrs):
            raise NotARun(store_root.run_url(run_id), "a Zarr group without a run's attributes",
                          "keep trajscope's labels for its runs")
        change(attrs)
        store_root.write_bytes(run_id, "zarr.json", json.dumps(document, indent=2, allow_nan=False).encode())
    return attrs


def tag_run(
    run: str | os.PathLike,
    root: str | os.PathLike | StoreRoot | None = None,
    *,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    note: str | None = None,
) -> dict[str, Any]:
    """Add and remove tags and/or replace the note of a run (``note=""`` clears it). Returns the attributes."""
    add = [validate_tag(t) for t in add]
    remove = list(remove)
    both = sorted(set(add) & set(remove))
    if both:  # (found by a review: `tag RUN good --remove good` ended without the tag, saying nothing)
        raise UserError(f"tag {both[0]!r} is both added and removed: give it once, to add or with --remove")

    def change(attrs: dict[str, Any]) -> None:
        present = set(run_attr(attrs, "tags") or [])  # (JSON text in an export)
        absent = sorted(set(remove) - present)
        if absent:  # (a mistyped tag was "removed" silently: found by a review)
            raise UserError(f"the run has no tag {absent[0]!r} to remove (its tags: "
                            f"{', '.join(sorted(present)) or 'none'}): nothing changed")
        tags = (present | set(add)) - set(remove)
        attrs["tags"] = sorted(tags)
        if JSON_ATTRS in attrs:  # ``tags`` is a list now, no longer JSON text
            attrs[JSON_ATTRS] = " ".join(n for n in attrs[JSON_ATTRS].split() if n != "tags") or None
            if attrs[JSON_ATTRS] is None:
                del attrs[JSON_ATTRS]
        if note is not None:
            attrs["note"] = note or None

    return edit_attrs(run, root, change)


#: ``delete_run(expect=...)``: what a deletion stopped half-way left, not a run
LEFTOVERS = "leftovers"
_UNCHECKED = object()


def run_identity(run: str | os.PathLike, root: str | os.PathLike | StoreRoot | None = None) -> str | None:
    """What :func:`delete_run` is told to expect of ``run``: :data:`LEFTOVERS` for what a stopped deletion
    left, else the run's ``run_uid`` (``None`` for a run written before it existed); RunNotFound otherwise."""
    store_root, run_id = resolve_run(run, root)
    if store_root.has_leftovers(run_id):
        return LEFTOVERS
    return store_root.read_attrs(run_id, checked=False).get(RUN_UID)  # (a malformed run can be deleted too)


def delete_run(run: str | os.PathLike, root: str | os.PathLike | StoreRoot | None = None, *,
               expect: str | None | object = _UNCHECKED) -> str:
    """Delete a run that is not being written (its writer lock is held while it is removed), or what a deletion
    stopped half-way left of one; returns its id.

    ``expect``: what :func:`run_identity` gave when the run was shown to the user (``trajscope rm`` asks
    first); checked again under the lock, so a run created again under the same id meanwhile is not deleted
    in its place (a :class:`UserError`, nothing deleted).
    """
    store_root, run_id = resolve_run(run, root)
    if not store_root.has_leftovers(run_id):
        document = store_root.read_group_metadata(run_id, checked=False)  # RunNotFound: nothing of that id
        # (a document no reader can use, not JSON or not an object: {}, is a run's, deleted; a group document
        # without "attributes", which Zarr v3 allows, has none)
        attrs = (document.get("attributes") or {}) if document else None  # (null: none either)
        if isinstance(attrs, dict) and store_root.is_foreign(run_id, attrs):  # someone else's: never deleted
            raise NotARun(store_root.run_url(run_id), "a Zarr group without a run's attributes",
                          "delete it yourself if it should go")
    with WriterLock(store_root, run_id, purpose="deleting") as lock:
        with lock.kept_alive():  # (a deletion may be long; its lease is no longer refreshed once removed below)
            if expect is not _UNCHECKED and run_identity(run_id, store_root) != expect:
                raise UserError(f"run {run_id!r} changed since it was listed (deleted or created again meanwhile): "
                                "nothing deleted; list it again (trajscope ls) and repeat the command if it should go")
            store_root.delete(run_id)
        if lock.run_id == run_id:  # (a link's lock is the run it names, which stays: found by a review)
            lock.remove_file()
    return run_id
