"""Which write path a run takes: how the store writes its chunk files (``record.io``) and whether a writer
process writes them (``record.writer``). Chosen by the two-layer producer and by ``ModuleRecorder`` before their
:class:`~trajscope.producer.recorder.Recorder` starts.
"""

from __future__ import annotations

import torch

from trajscope.store import StoreRoot
from trajscope.store.chunkio import DIRECT_IO_FILESYSTEMS, filesystem_type
from trajscope.store.writer_process import WriterProcess


def write_io(choice: str, root: StoreRoot, device: torch.device, compressor: str = "none") -> str:
    """How the store writes a run's chunk files (``record.io``).

    ``auto`` is ``direct`` for uncompressed CPU training on a local root on a disk filesystem
    (:data:`~trajscope.store.chunkio.DIRECT_IO_FILESYSTEMS`): the kernel copies nothing into the page cache, a
    copy that took CPU time the training shares (BENCHMARKS.md, "Recording overhead"). It is ``buffered``
    otherwise: a GPU run's bursts are absorbed by the page cache faster than a disk takes them, and its cores
    are not the training's; on tmpfs a direct write is the same copy, on a network filesystem each direct write
    waits for the server; an object store has no page cache of ours; a compressed chunk is a new ``bytes``
    object, never page-aligned (a direct write would never happen, while the recorder would copy every state).
    """
    if choice != "auto":
        return choice
    if device.type != "cpu" or not root.is_local or compressor != "none":
        return "buffered"
    return "direct" if filesystem_type(root.location) in DIRECT_IO_FILESYSTEMS else "buffered"


def wants_writer_process(choice: str, root: StoreRoot, device: torch.device) -> bool:
    """Whether ``record.writer`` (``choice``) asks for a writer process and it applies here.

    ``process``: on a CPU or CUDA device and a local root (else the writer thread). ``auto`` (the default)
    and ``thread``: the writer thread. On the CPU the process was never measurably faster than the thread; on
    an H200 the thread recorded the reference config at 0.99× and 1.39× the bare loop's time (two runs) against
    1.82× and 1.79× for the process, which the CPU proxy ``bench/writer_isolation.py --loop launch-bound`` had
    favoured (BENCHMARKS.md, "Recording overhead" and "GPU table").
    """
    from trajscope.store import writer_process

    return (choice == "process" and device.type in ("cpu", "cuda") and root.is_local
            and writer_process.available())


def start_writer_process(choice: str, root: StoreRoot, device: torch.device) -> WriterProcess | None:
    """A started writer process if :func:`wants_writer_process` says so, else ``None`` (the writer thread).

    Started as early as possible, so its start-up overlaps the caller's (the dataset build).
    """
    if not wants_writer_process(choice, root, device):
        return None
    return WriterProcess.start()
