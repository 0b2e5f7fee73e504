"""The run's group document (``<run>.zarr/zarr.json``) as readers accept it.

Anyone who can write the root can leave a ``zarr.json`` that is not JSON, not a mapping, or whose
trajscope attributes have the wrong type (``committed_steps: "5k"``, ``null``, ``-5``, more than the
capacity). Such a document is refused where it is read (:func:`check_run_document`), with
:class:`~trajscope.store.errors.MalformedRun` naming the field, so that listings skip that run and its
own reads fail with one clear error, instead of a ``TypeError`` deep in a reader (an HTTP 500, a CLI
traceback). A Zarr group without trajscope's attributes (someone else's) passes: what it lacks is told
apart where a run is needed.
"""

from __future__ import annotations

from typing import Any

from trajscope.store.dataset_attrs import JSON_ATTRS
from trajscope.store.errors import MalformedRun

#: attributes that are counts of states or steps: integers >= 0 where present
COUNTS = ("committed_steps", "capacity", "chunk_steps", "last_step", "format_version")
#: attributes that are mappings where present
MAPPINGS = ("config", "schema", "data_info", "recording_waits", "versions")
#: attributes that are lists where present
LISTS = ("tags", "time_variables")
#: attributes that are text where present
TEXTS = ("status", "run_id", "created", "updated", "finished")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_run_document(run_id: str, document: Any) -> dict[str, Any]:
    """``document`` (the parsed ``zarr.json``) when a reader can use it; :class:`MalformedRun` naming what is
    wrong otherwise: not a JSON object, ``attributes`` not an object, or a trajscope attribute of the wrong
    type (:data:`COUNTS`, :data:`MAPPINGS`, :data:`LISTS`, :data:`TEXTS`; a mapping or list may be JSON
    text where :data:`~trajscope.store.dataset_attrs.JSON_ATTRS` names it), or ``committed_steps`` over
    ``capacity``."""
    if not isinstance(document, dict):
        raise MalformedRun(run_id, f"its zarr.json is a JSON {type(document).__name__}, not an object")
    attrs = document.get("attributes", {})
    if not isinstance(attrs, dict):
        raise MalformedRun(run_id, f"its zarr.json's attributes are a JSON {type(attrs).__name__}, not an object")
    for name in COUNTS:
        if name in attrs and not _count(attrs[name]):
            raise MalformedRun(run_id, f"{name} is {attrs[name]!r}, not a whole number >= 0")
    encoded = attrs.get(JSON_ATTRS)  # (a copy written by xarray holds nested values as JSON text, named here)
    encoded = set(encoded.split()) if isinstance(encoded, str) else set()
    for kinds, names, what in ((dict, MAPPINGS, "an object"), (list, LISTS, "a list"), (str, TEXTS, "text")):
        for name in names:
            value = attrs.get(name)
            if value is not None and not isinstance(value, kinds) and not (name in encoded and isinstance(value, str)):
                raise MalformedRun(run_id, f"{name} is {value!r}, not {what}")
    if "committed_steps" in attrs and "capacity" in attrs and attrs["committed_steps"] > attrs["capacity"]:
        raise MalformedRun(run_id, f"committed_steps {attrs['committed_steps']} is over its capacity {attrs['capacity']}")
    return document
