"""What a recording leaves in its run when it ends: the loop's waits for the store (``recording_waits``) and the
one-line error of a run whose end could not be stored (:func:`unstored_end`). Used by the two-layer producer
and by ``ModuleRecorder``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from trajscope.store import RunWriter
from trajscope.store.errors import RunFailed

if TYPE_CHECKING:
    from trajscope.producer.recorder import Recorder


def recording_waits(previous: Mapping | None, recorder: "Recorder", seconds: float) -> dict:
    """The run attribute ``recording_waits``: the seconds a run's loop waited for the store
    (``store_seconds``, :attr:`Recorder.waited_seconds`), for its last writes (``close_seconds``), for its
    device (``device_seconds``), and the seconds it recorded (``seconds``, up to the run's final write),
    added to ``previous`` (what the segments of the run before this one, e.g. before a ``resume``, left
    there). A segment killed before it finished left nothing, so the sums cover the segments that finished.
    A previous value that is not a number counts as 0; keys this version does not know are kept."""
    previous = dict(previous) if isinstance(previous, Mapping) else {}
    segment = {"store_seconds": recorder.waited_seconds, "close_seconds": recorder.closing_seconds,
               "device_seconds": recorder.device_waited_seconds, "seconds": seconds}
    for name, value in segment.items():
        before = previous.get(name)
        before = float(before) if isinstance(before, (int, float)) and not isinstance(before, bool) else 0.0
        previous[name] = round(before + value, 6)
    return previous


def unstored_end(writer: RunWriter, status: str, error: str | None, committed: int, exc: Exception) -> RunFailed:
    """The one-line error for a run whose end could not be written (:meth:`RunWriter.finish` raised ``exc``, e.g.
    a full disk): what is stored, and the command that finishes the run, read back from the store."""
    location = writer.root.run_url(writer.run_id)
    what = f"run {writer.run_id!r} ended {status}{f' ({error})' if error else ''}"
    try:
        stored = writer.root.read_attrs(writer.run_id).get("status")
    except Exception:  # noqa: BLE001 - unreadable now: said as not stored
        stored = None
    if stored == status:  # the final document is written; cutting the arrays to the committed states failed
        return RunFailed(f"{what}, but its arrays could not be cut to its {committed} committed states ({exc}); "
                         f"readers cut them all the same, and `trajscope fsck --repair {location}` finishes the cut")
    return RunFailed(f"{what}, but its status could not be stored ({exc}); its {committed} committed states are kept: "
                     f"once the cause is gone (a full disk, an object store out of reach), `trajscope resume "
                     f"{location}` ends or continues it")
