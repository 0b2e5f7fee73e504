"""The segments of a resumed run: where each ``resume`` took over, on which device and torch.

On one machine a resumed run is bit-identical to an uninterrupted one. Resumed on another device or another
torch version (a GPU run continued where there is none, with ``train.device: auto``; a sweep re-run on
another machine) its states are still exact gradient steps, but no longer bit-identical: the resume warns
(:class:`ResumeWarning`) and the run's ``resumed`` attribute records every segment.
"""

from __future__ import annotations

import warnings

from trajscope.store import RunWriter
from trajscope.store.writer import library_versions


class ResumeWarning(UserWarning):
    """A run resumed where its numbers cannot match an uninterrupted run's bit for bit (another device or
    another torch version than the segment before)."""


def record_segment(writer: RunWriter, device: str) -> None:
    """Append this resume's segment to the run's ``resumed`` attribute (stored with its next commit): the first
    state it records, its ``device`` (as the run's ``device`` attribute names one) and torch version. Warns
    (:class:`ResumeWarning`) when either differs from the segment before (the run's ``device`` and ``versions``,
    or the last ``resumed`` entry)."""
    segments = list(writer.attrs.get("resumed") or [])
    before = segments[-1] if segments else {"device": writer.attrs.get("device"),
                                            "torch": (writer.attrs.get("versions") or {}).get("torch")}
    now = {"state": writer.committed_steps, "device": device, "torch": library_versions().get("torch")}
    changed = [f"{what} {before.get(what)} → {now[what]}" for what in ("device", "torch")
               if before.get(what) is not None and before.get(what) != now[what]]
    if changed:
        warnings.warn(ResumeWarning(
            f"run {writer.run_id!r} continues from state {now['state']} with another {', '.join(changed)}: the "
            "states from there on are exact gradient steps, but not bit-identical to an uninterrupted run (resume "
            "it where it was recorded for that); the run's 'resumed' attribute records each segment"), stacklevel=3)
    writer.attrs["resumed"] = [*segments, now]
