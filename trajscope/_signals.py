"""The signals that interrupt a command as Ctrl-C does (a leaf: the standard library only, nothing of ours), for the
CLI from its first line and for training (:func:`trajscope.producer.train.sigterm_as_interrupt`)."""

from __future__ import annotations

import signal


def interrupting_signals() -> list[signal.Signals]:
    """SIGINT, SIGTERM (what ``docker stop`` sends), and SIGHUP (a closed terminal or ssh session: found by a review,
    it killed ``produce`` and left the run ``running``, its last states lost) unless it is ignored (``nohup``: the
    command goes on)."""
    hangup = getattr(signal, "SIGHUP", None)
    keep_going = hangup is None or signal.getsignal(hangup) == signal.SIG_IGN
    return [signal.SIGINT, signal.SIGTERM] + ([] if keep_going else [hangup])
