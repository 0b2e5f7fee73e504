"""PID 1 of the images: ``trajscope ARGS`` with SIGTERM obeyed from the first instruction on.

The kernel drops a signal that PID 1 has no handler for, and importing trajscope takes about a second
before ``trajscope.cli.main`` sets its own (SIGTERM interrupts a command as Ctrl-C does). A ``podman stop``
in that second would wait out its grace period and end in a SIGKILL; here it ends the process at once
(exit 143: nothing has started yet).
"""

import signal
import sys

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

from trajscope.cli import main  # noqa: E402  (after the handler: this import is the slow part)

main()
