"""Training and recording a run: :func:`produce` starts one, :func:`resume` continues one.

The recorded state at index ``k`` is the state after ``schedule[k]`` gradient steps (index 0 = the
initialization); its gradient-flow time is ``t = step * lr``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from trajscope._signals import interrupting_signals
from trajscope.producer.budget import check_budget, data_shape
from trajscope.producer.config import RunConfig, load_config
from trajscope.producer.data import build_dataset
from trajscope.producer.model import State, TwoLayerReLU, initialize
from trajscope.producer.outcomes import recording_waits, unstored_end
from trajscope.producer.recorder import Recorder
from trajscope.producer.write_path import start_writer_process, write_io
from trajscope.producer.segments import record_segment
from trajscope.producer import two_layer
from trajscope.store import RunWriter, StoreRoot, resolve_run, validate_run_id
from trajscope.store.dataset_attrs import run_attr
from trajscope.store.errors import RunFailed, UserError, is_storage_error
from trajscope.store.hotpath import usable_cores
from trajscope.store.root import command_for

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunResult:
    """What a finished (or stopped) :func:`produce`/:func:`resume` call left on disk."""

    run_id: str
    location: str
    status: str
    committed_steps: int
    last_step: int
    final_loss: float | None
    seconds: float
    #: seconds the training loop waited for the store: for a free chunk buffer whose chunk had reached host
    #: memory (:attr:`~trajscope.producer.recorder.Recorder.waited_seconds`)
    store_wait_seconds: float = 0.0
    #: seconds the last chunks took to be written and committed after the last step
    store_close_seconds: float = 0.0
    #: seconds it waited for a free buffer whose chunk the device was still computing or copying (a GPU loop
    #: that ran ahead of its device; 0 on the CPU)
    device_wait_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown train.device {name!r}: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available: use train.device=auto or cpu")
    return device


def recording_schedule(config: RunConfig) -> np.ndarray:
    """Steps whose state is recorded: every ``record.every`` steps (default every step) or log-spaced.

    Step 0 (the initialization) and the last step are always included.
    """
    steps, rec = config.train.steps, config.record
    if rec.schedule == "log" and steps > 0:
        points = np.unique(np.round(np.geomspace(1, steps, rec.log_points)).astype(np.int64))
        schedule = np.concatenate([[0], points])
    else:
        schedule = np.arange(0, steps + 1, rec.every, dtype=np.int64)
    if schedule[-1] != steps:
        schedule = np.append(schedule, steps)
    return np.unique(schedule).astype(np.int64)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _default_run_id(config: RunConfig, root: StoreRoot) -> str:
    base = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id, suffix = base, 1
    while root.exists(run_id):
        suffix += 1
        run_id = f"{base}-{suffix}"
    return run_id


#: a process that ends its run on the first interrupting signal and ignores the next ones (a sweep's worker: a Ctrl-C
#: reaches it from the terminal and then its sweep's SIGTERM, which, taken for a second Ctrl-C, left the run
#: ``running``: found by a review; the sweep kills a worker that has not ended its run within its STOP_SECONDS)
INTERRUPT_ONCE = False
#: the sweep process of a sweep's worker: a later signal is ignored only while that process lives (found by a
#: review: a worker whose sweep had died, blocked on a pool's queue lock, ignored the death-of-parent SIGTERM for ever)
PARENT_PID: int | None = None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat :func:`interrupting_signals` as an interrupt while training (main thread only).

    SIGINT's handler is set explicitly: a process started in the background inherits SIGINT ignored. With
    :data:`INTERRUPT_ONCE` the first signal interrupts and every later one is ignored, to the end of the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = interrupting_signals()
    fired = []

    def ignored(signum, frame):  # noqa: ARG001  (a Python handler, not SIG_IGN: one already pending when it is set
        if PARENT_PID is not None and os.getppid() != PARENT_PID:  # would raise "Signal 15 ignored due to race
            os._exit(1)  # condition"); an orphaned worker ends (what its run committed is kept, resumable)

    def handler(signum, frame):  # noqa: ARG001
        if INTERRUPT_ONCE:
            fired.append(signum)
            for sig in signals:
                signal.signal(sig, ignored)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        if not fired:  # (once fired with INTERRUPT_ONCE: the next signals stay ignored while the run ends)
            for sig, old in previous.items():
                signal.signal(sig, old)


ProgressCallback = Callable[[dict[str, Any]], None]


def produce(
    config: str | os.PathLike | dict | RunConfig | None = None,
    *,
    root: str | os.PathLike | StoreRoot | None = None,
    name: str | None = None,
    overrides: list[str] | None = None,
    progress: ProgressCallback | None = None,
    labels: dict[str, Any] | None = None,
) -> RunResult:
    """Train the configured network and record its trajectory as a new run under ``root``.

    ``labels`` (``tags``, ``note``; see :func:`trajscope.store.run_attrs.labels`) are stored with the run.
    """
    cfg = load_config(config, overrides)
    if name is not None:
        validate_run_id(name)  # an empty or malformed --name is refused, never replaced by the default
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root)
    device = resolve_device(cfg.train.device)
    shape = data_shape(cfg)
    if shape is not None:  # sizes known from the config: checked before the data are built
        check_budget(cfg, store_root, *shape)
    # started now, so its start-up overlaps the dataset build; owned by the recorder once it exists
    process = start_writer_process(cfg.record.writer, store_root, device)
    try:
        return _produce(cfg, store_root, device, name, labels, progress, process)
    except BaseException:
        if process is not None:
            process.kill()
        raise


def _produce(cfg, store_root, device, name, labels, progress, process) -> RunResult:
    X, y, data_info = build_dataset(cfg)
    if cfg.train.batch_size is not None and cfg.train.batch_size > X.shape[0]:
        raise UserError(f"train.batch_size {cfg.train.batch_size} exceeds the {X.shape[0]} samples")
    check_budget(cfg, store_root, X.shape[0], X.shape[1])
    run_id = name if name is not None else _default_run_id(cfg, store_root)
    dtype = cfg.train.dtype
    schedule = recording_schedule(cfg)
    attrs = {
        "config": cfg.model_dump(mode="json"),
        "schema": two_layer.schema(dtype),
        "data_info": data_info,
        "device": _device_label(device),
        "time_convention": "t = step * lr (gradient-flow time); under reduction 'mean' this time is n times "
        "the time of the 'sum' loss",
        **(labels or {}),
    }
    try:
        writer = RunWriter.create(
            store_root,
            run_id,
            variables=two_layer.variables(dtype),
            sizes={"neuron": cfg.model.width, "feature": X.shape[1], "sample": X.shape[0]},
            capacity=len(schedule),
            static={"X": X.astype(dtype), "y": y},
            attrs=attrs,
            compressor=cfg.record.compressor,
            chunk_bytes=int(cfg.record.chunk_mib * 2**20),
        )
    except KeyboardInterrupt as exc:
        exc.add_note(_creation_cut_short(store_root, run_id))
        raise
    try:
        state = two_layer.init(cfg, X.shape[1], TORCH_DTYPES[dtype])
    except BaseException as exc:
        _end_unstarted(writer, exc)
        raise
    return _train(cfg, writer, state, X.astype(dtype), y, schedule, device, start_index=0, progress=progress,
                  process=process)


def _creation_cut_short(store_root: StoreRoot, run_id: str) -> str:
    """The CLI's line for a Ctrl-C while ``RunWriter.create`` made the run: what it left (found by a review: a run
    whose creation had ended, ``running`` with no state, was told half-made, and the command given refused it)."""
    try:
        status = store_root.read_attrs(run_id).get("status")
    except Exception:  # noqa: BLE001 - none yet, or unreadable: the half-made case
        status = None
    if status == "running":
        return (f"interrupted as run {run_id!r} was created: nothing was trained; "
                f"`{command_for('resume', run_id, store_root.location)}` trains it")
    return (f"interrupted while run {run_id!r} was being created: nothing was trained, and the run may be left "
            f"half-made (`creating` in `trajscope ls`); "
            f"`{command_for('produce CONFIG --name', run_id, store_root.location)}` makes it anew")


def _end_unstarted(writer: RunWriter, exc: BaseException) -> None:
    """End a run that failed before its recorder existed (nothing new was recorded): ``failed`` with the
    error (``interrupted`` for a Ctrl-C), its lock released, so that ``resume`` takes it up again. Without
    this a long-lived process (a notebook, a sweep's worker) kept the run locked after the error."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    try:
        writer.finish("interrupted" if interrupted else "failed", None if interrupted else f"{type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001 - the first error is the one raised (finish releases the lock regardless)
        pass


def resume(
    run: str | os.PathLike,
    *,
    root: str | os.PathLike | StoreRoot | None = None,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Continue an unfinished run from its last committed state.

    On the CPU the finished trajectory is bit-identical to the one an uninterrupted run would have
    recorded: the state is stored exactly (same dtype as training), minibatches depend only on
    ``(seed, step)``, and the partial last chunk is rewritten whole.
    """
    store_root, run_id = resolve_run(run, root)
    attrs = store_root.read_attrs(run_id)
    if "config" not in attrs and "schema" in attrs:  # checked before the run is reopened: nothing is changed
        raise UserError(f"run {run_id!r} was recorded from a script (ModuleRecorder), not by `trajscope produce`: "
                        "it has no producer config to train from; resume it from that script with "
                        "ModuleRecorder(..., resume=True); nothing was changed")
    writer = RunWriter.reopen(store_root, run_id)
    process, stopped_loss = None, None
    try:
        cfg = load_config(writer.attrs["config"])
        device = resolve_device(cfg.train.device)
        record_segment(writer, _device_label(device))
        process = start_writer_process(cfg.record.writer, store_root, device)
        X = writer.group["X"][...]
        y = writer.group["y"][...]
        schedule = recording_schedule(cfg)
        committed = writer.committed_steps
        chunk_start = (committed // writer.chunk_steps) * writer.chunk_steps
        preload = writer.read_states(chunk_start, committed) if committed % writer.chunk_steps else None
        if committed == 0:
            state = initialize(cfg.init, cfg.model.width, X.shape[1], train_v=cfg.train.train_v, seed=cfg.seed,
                               dtype=TORCH_DTYPES[cfg.train.dtype])
        else:
            last = writer.read_states(committed - 1, committed)
            if int(last["step"][0]) != int(schedule[committed - 1]):
                raise UserError(f"run {run_id!r}: stored steps do not match its recording schedule; cannot resume")
            state = State(W=torch.from_numpy(last["W"][0].copy()), v=torch.from_numpy(last["v"][0].copy()))
            if reached_stop_loss(cfg, last["loss"][0]):
                stopped_loss = float(last["loss"][0])  # the run had reached its stop point: nothing to train
                preload = None  # nor any chunk to rewrite
    except BaseException:
        if process is not None:
            process.kill()
        writer.lock.release()
        raise
    try:
        return _train(cfg, writer, state, X, y, schedule, device, start_index=committed, preload=preload,
                      progress=progress, process=process, stopped_loss=stopped_loss)
    except BaseException:  # as in produce: a writer process never outlives a failed start
        if process is not None:
            process.kill()
        raise


def reached_stop_loss(config: RunConfig, loss: float | torch.Tensor) -> bool:
    """Whether a recorded state's loss ends the run: ``loss <= train.stop_loss`` (never without one)."""
    return config.train.stop_loss is not None and float(loss) <= config.train.stop_loss


def cpu_threads(config: RunConfig) -> int:
    """Training threads on the CPU: ``train.threads``, else one core fewer than the process may run on
    (:func:`~trajscope.store.hotpath.usable_cores`; the recorder's writer keeps a core)."""
    return config.train.threads or max(1, usable_cores() - 1)


def minibatch_rows(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Sample indices of the minibatch used at ``step``: a function of ``(seed, step)`` alone."""
    return np.random.default_rng([seed, step]).choice(n, size=batch, replace=False)


def gradient_step(model: TwoLayerReLU, state: State, cfg: RunConfig, step: int,
                  pre: torch.Tensor | None, out: torch.Tensor | None) -> State:
    """One update ``θ <- θ - lr ∇L(θ)`` (full batch from the forward pass ``pre, out``, or a minibatch)."""
    lr, batch = cfg.train.lr, cfg.train.batch_size
    if batch is None:
        grad_W, grad_v = model.gradient(state, pre, out)
    else:
        rows = torch.from_numpy(minibatch_rows(cfg.seed, step, model.n, batch))
        if model.X.device.type == "cuda":  # from pinned memory, asynchronously: a copy from pageable memory
            rows = rows.pin_memory().to(model.X.device, non_blocking=True)  # waits for the device every step
        pre_b, out_b = model.forward(state, rows)
        grad_W, grad_v = model.gradient(state, pre_b, out_b, rows)
    return State(W=state.W - lr * grad_W, v=state.v - lr * grad_v if cfg.train.train_v else state.v)


def _last_committed_loss(writer: RunWriter, committed: int) -> float | None:
    """The loss of the run's last committed state (``None`` where it cannot be read: a lost chunk, which ``fsck``
    reports)."""
    try:
        return float(writer.read_states(committed - 1, committed)["loss"][0])
    except Exception:  # noqa: BLE001 - the run ends as before, without a final loss
        return None


def _train(
    cfg: RunConfig,
    writer: RunWriter,
    state: State,
    X: np.ndarray,
    y: np.ndarray,
    schedule: np.ndarray,
    device: torch.device,
    *,
    start_index: int,
    preload: dict[str, np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
    process=None,
    stopped_loss: float | None = None,
) -> RunResult:
    """Train from ``state`` and record on the schedule from ``start_index``. ``stopped_loss``: the loss of the
    last committed state of a resumed run that had already met ``train.stop_loss`` there (a run killed or
    failed after its final commit): nothing more is trained or recorded, the run is finished as complete."""
    dtype = TORCH_DTYPES[cfg.train.dtype]
    h, dim, n = cfg.model.width, X.shape[1], X.shape[0]
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": dtype, "v": dtype, "loss": torch.float64, "output": dtype}
    columns = {"step": schedule, "t": schedule * cfg.train.lr}  # known in advance: nothing to copy per step
    batch = cfg.train.batch_size
    index = start_index
    # a fresh run records its initial state; a resumed one already holds the state it restarts from
    step = int(schedule[index - 1]) if index > 0 else 0
    status, error, loss, started = "complete", None, stopped_loss, time.perf_counter()
    last_report = 0.0
    try:  # (e.g. the device out of memory for the data or the chunk buffers)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg))
            torch.set_flush_denormal(cfg.train.flush_denormal)
        model = TwoLayerReLU(torch.from_numpy(X).to(device), torch.from_numpy(y.astype(X.dtype)).to(device), cfg.loss)
        state = State(W=state.W.to(device=device, dtype=dtype), v=state.v.to(device=device, dtype=dtype))
        io = write_io(cfg.record.io, writer.root, device, cfg.record.compressor)
        writer.set_write_options(durability=cfg.record.durability, threads=cfg.record.write_threads,
                                 commit_seconds=cfg.record.commit_seconds, io=io)
        # the step makes new tensors and never changes a recorded one: on the CPU, written through the page
        # cache, they are kept, not copied (direct I/O takes aligned chunk buffers, so they are copied there)
        recorder = Recorder(writer, shapes, dtypes, device, start_index=start_index, columns=columns, preload=preload,
                            buffers=cfg.record.buffers, process=process,
                            by_reference=device.type == "cpu" and process is None and io == "buffered",
                            loop_submits=cfg.record.writer == "loop", flush_seconds=cfg.record.flush_seconds)
    except BaseException as exc:
        if device.type == "cpu":
            torch.set_flush_denormal(False)
        _end_unstarted(writer, exc)
        raise
    try:
        with sigterm_as_interrupt():
            while stopped_loss is None:  # (a resumed run already at its stop point records nothing more)
                pre, out = model.forward(state) if (batch is None or
                                                    (index < len(schedule) and schedule[index] == step)) else (None, None)
                if index < len(schedule) and schedule[index] == step:
                    loss = model.loss_value(out)
                    recorder.record(**two_layer.record_values(state, loss, out))
                    index += 1
                    if reached_stop_loss(cfg, loss):
                        break
                if step >= cfg.train.steps:
                    break
                state = two_layer.step(model, state, cfg, step, pre, out)
                step += 1
                now = time.perf_counter()
                if progress is not None and now - last_report > 0.25:
                    last_report = now
                    progress({"step": step, "steps": cfg.train.steps, "loss": None if loss is None else float(loss),
                              "committed": recorder.committed, "elapsed": now - started})
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as exc:  # noqa: BLE001 - stored with the run, then re-raised
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        if device.type == "cpu":
            torch.set_flush_denormal(False)  # the flag is per thread: leave the caller's numerics alone
    try:
        committed = recorder.close()
    except KeyboardInterrupt as exc:  # while the last chunks were written: the run ends over what is committed
        if not recorder.stopped:  # a second Ctrl-C while its writer still runs: `resume` ends the run later,
            recorder.unlock_when_stopped()  # in this process too once the writer has stopped
            exc.add_note(f"interrupted again while the last states were written: run {writer.run_id!r} is left "
                         f"`running` with the states committed; "
                         f"`{command_for('resume', writer.run_id, writer.root.location)}` continues it")
            raise
        committed = recorder.committed
        status, error = recorder.outcome_of_interrupted_close(status, error)
    except Exception as exc:  # noqa: BLE001
        committed = recorder.committed
        status, error = "failed", error or f"writer: {exc}"
    if loss is None and 0 < committed <= start_index:  # this segment recorded nothing: a run resumed at its last
        loss = _last_committed_loss(writer, committed)  # state ends with that state's loss, as fsck --repair reads
    final_loss = None if loss is None else float(loss)  # it (found by a review: it ended with none, `not_finite` lost)
    waits = recording_waits(run_attr(writer.attrs, "recording_waits"), recorder, time.perf_counter() - started)
    try:
        writer.finish(status, error, final_loss=final_loss, last_step=int(schedule[committed - 1]) if committed else 0,
                      recording_waits=waits)
    except KeyboardInterrupt as exc:  # (found by a review: the CLI said "nothing was trained")
        exc.add_note(f"interrupted while the end of run {writer.run_id!r} was stored ({committed} states committed): "
                     f"it may be left part-ended; `{command_for('fsck', writer.run_id, writer.root.location)}` says "
                     "what is left and `--repair` ends it")
        raise
    except Exception as exc:  # e.g. a full disk, or a lost object store, took the final document too (finish
        if not is_storage_error(exc):  # released the lock)
            raise
        raise unstored_end(writer, status, error, committed, exc) from None
    result = RunResult(
        run_id=writer.run_id,
        location=writer.root.run_url(writer.run_id),
        status=status,
        committed_steps=committed,
        last_step=int(schedule[committed - 1]) if committed else 0,
        final_loss=final_loss,
        seconds=time.perf_counter() - started,
        store_wait_seconds=recorder.waited_seconds,
        store_close_seconds=recorder.closing_seconds,
        device_wait_seconds=recorder.device_waited_seconds,
    )
    if progress is not None:
        progress({"step": result.last_step, "steps": cfg.train.steps, "loss": final_loss, "committed": committed,
                  "elapsed": result.seconds, "done": True})
    if status == "failed":
        raise RunFailed(f"run {writer.run_id!r} failed: {error} ({committed} states committed; once the cause is "
                        f"fixed `trajscope resume {writer.root.run_url(writer.run_id)}` continues it)")
    return result
