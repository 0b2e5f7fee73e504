"""``trajscope.ModuleRecorder``: record any ``torch.nn.Module`` from the user's own training loop.

::

    with trajscope.ModuleRecorder(model, root="runs", name="mlp") as rec:
        rec.record()                      # the initial state (step 0)
        for step in range(1, steps + 1):
            ...; opt.step()
            rec.record(loss=loss)         # every parameter after this step, plus named extras

It is built on :class:`~trajscope.producer.recorder.Recorder` (chunk buffers on the model's device,
asynchronous copies, a writer thread, the store's commit protocol), so a GPU model is recorded with no
host sync per step. The total number of steps need not be known: the run's capacity grows in large
increments (doubling) through :meth:`RunWriter.grow`; readers always trim to ``committed_steps``.

The run is created at the second ``record`` call (or at :meth:`close`), so the extras of the first two
calls (``rec.record()`` then ``rec.record(loss=...)``) become its variables; an extra first seen later is
refused with a message. An extra missing from a call is stored as NaN (0 for integers) at that state.
Optimizer state is **not** recorded: to resume exactly, restore it yourself (or use plain SGD).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from trajscope.producer import module as adapter
from trajscope.producer.outcomes import recording_waits, unstored_end
from trajscope.producer.recorder import FLUSH_SECONDS, Recorder, check_state_shape
from trajscope.producer.write_path import write_io
from trajscope.producer.segments import record_segment
from trajscope.store import RunWriter, StoreRoot
from trajscope.store.writer import is_half_created
from trajscope.store.chunkio import WRITE_IO_MODES
from trajscope.store.dataset_attrs import run_attr
from trajscope.store.errors import RunFailed, UserError, is_storage_error
from trajscope.store.layout import COMPRESSORS, validate_run_id, validate_variable_name
from trajscope.store.schema import MODULE, read_schema

#: first capacity, in time chunks, when the caller gives no ``expected_steps``
INITIAL_CHUNKS = 8


class ModuleRecorder:
    """Record every state of ``module`` into the run ``<root>/<name>.zarr``.

    Parameters
    ----------
    module
        The model; its ``named_parameters()`` are recorded (all, or those matching ``parameters``).
    root, name
        Store root (directory or fsspec URL; default ``$TRAJSCOPE_ROOT`` or ``./runs``) and run id
        (default ``<ClassName>-<time>``).
    every
        Record one ``record()`` call in ``every`` (the first call, step 0, always). Default: every step, or
        on ``resume`` the run's own (another one given there is refused: the run would mix strides).
    parameters
        ``fnmatch`` patterns of parameter names to record (e.g. ``["fc*.weight"]``); default all.
    buffers
        Also record buffers (``True``: all; or a list of patterns), e.g. BatchNorm running statistics.
    gradients
        Also record each parameter's ``.grad`` as ``NAME.grad`` (NaN where there is none yet): the
        gradient stored with a state is the one its preceding optimizer step used.
    dims
        Dim names of tensor extras, e.g. ``{"logits": ("sample", "class")}``.
    resume
        Append to the unfinished run ``name`` (after a crash or an interrupt) instead of creating it;
        restore your model with :meth:`last_state` and continue from :attr:`step`. A run that does not
        exist yet is created.
    expected_steps
        A hint for the first capacity (the run grows past it anyway).
    attrs
        JSON-ready metadata stored with the run under ``attrs["user"]``.
    compressor, chunk_mib, queue_chunks
        Codec (``none``/``zstd``), target size of a chunk of the largest variable (on ``resume`` both are the
        run's own, its chunks being laid out already: those given are not used), and number of chunk
        buffers (bound on memory and on work queued for the writer; default: enough to keep every write
        thread of the store busy, plus the one being filled, at least 3,
        :func:`~trajscope.producer.staging.default_buffers`).
    flush_seconds
        A chunk not yet full is handed to the store by the first ``record()`` at least this many seconds after its
        oldest state not yet handed over (default 2; 0: full chunks only): a slow loop's states reach live readers
        and survive a kill within about ``flush_seconds`` + 0.5 s, not only once a chunk (up to 1024 states) is
        full. :meth:`flush` hands them over at once. See :class:`~trajscope.producer.recorder.Recorder`.
    io
        How chunk files are written on a local root: ``buffered``, ``direct`` or ``auto`` (default: direct I/O
        for an uncompressed CPU module on ext2/3/4 or xfs, :func:`~trajscope.producer.write_path.write_io`; the
        recorder copies every state into page-aligned chunk buffers either way).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        root: str | os.PathLike | StoreRoot | None = None,
        name: str | None = None,
        *,
        every: int | None = None,
        parameters: Sequence[str] | None = None,
        buffers: bool | Sequence[str] = False,
        gradients: bool = False,
        dims: Mapping[str, Sequence[str]] | None = None,
        resume: bool = False,
        expected_steps: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        compressor: str = "none",
        chunk_mib: float | None = None,
        queue_chunks: int | None = None,
        io: str = "auto",
        flush_seconds: float = FLUSH_SECONDS,
    ):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"ModuleRecorder records a torch.nn.Module, not {type(module).__name__}")
        _count("every", every, minimum=1, what="record every N-th call")
        _count("expected_steps", expected_steps, minimum=0, what="a hint for the number of steps")
        _count("queue_chunks", queue_chunks, minimum=2, what="the number of chunk buffers")
        if chunk_mib is not None and (isinstance(chunk_mib, bool) or not isinstance(chunk_mib, (int, float))
                                      or not 0 < chunk_mib <= 65536):
            raise UserError(f"chunk_mib={chunk_mib!r}: give the size of a chunk in MiB, a number above 0 (default 8)")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) \
                or not 0 <= flush_seconds <= 86400:
            raise UserError(f"flush_seconds={flush_seconds!r}: give seconds from 0 to 86400 (default "
                            f"{FLUSH_SECONDS:g}; 0: states go to the store in full chunks only)")
        self.flush_seconds = float(flush_seconds)
        if compressor not in COMPRESSORS:
            raise UserError(f"compressor={compressor!r}: use one of {', '.join(COMPRESSORS)}")
        self.module = module
        self.root = root if isinstance(root, StoreRoot) else StoreRoot(root)
        if name is not None and not str(name).strip():  # (found by a review: "" took the default name silently)
            raise UserError("name='': give the run a name, or leave name out for <ModelClass>-<date>-<time>")
        self.run_id = validate_run_id(name or f"{type(module).__name__}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.every = 1 if every is None else int(every)
        self.dims = adapter.check_dims_option(dims)
        self.expected_steps = expected_steps
        self.user_attrs = dict(attrs or {})
        try:  # (found by a review: refused only by the second record(), once training had begun)
            json.dumps(self.user_attrs, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise UserError(f"attrs: {err}; give values JSON can store (numbers, text, lists, dicts; no NaN)") from None
        self.compressor = compressor
        self.chunk_mib = chunk_mib
        self.queue_chunks = queue_chunks
        if io not in ("auto", *WRITE_IO_MODES):
            raise UserError(f"io={io!r}: use one of auto, {', '.join(WRITE_IO_MODES)}")
        self.io = io
        self.tracked = adapter.tracked(module, parameters, buffers, gradients)
        #: where each tracked tensor lives in the module, and its dtype: a tensor assigned there later is followed
        self._holders = {n: adapter.holder(n, role) for n, (role, _) in self.tracked.items()}
        self._tracked_dtypes = {n: t.dtype for n, (_, t) in self.tracked.items()}
        self._tracked_shapes = {n: tuple(t.shape) for n, (_, t) in self.tracked.items()}
        self.options = {"every": self.every, "parameters": None if parameters is None else list(parameters),
                        "buffers": buffers if isinstance(buffers, bool) else list(buffers), "gradients": gradients}
        self._selection = (parameters, buffers, gradients)
        self._watch_registrations()
        first = next(iter(self.tracked.values()), (None, torch.empty(0)))[1]
        self.device = first.device
        #: the step number the next ``record()`` call records (the calls made so far)
        self.step = 0
        self.writer: RunWriter | None = None
        self.recorder: Recorder | None = None
        self.specs: dict[str, Any] = {}
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._extras_seen: dict[str, torch.Tensor] = {}
        self._closed = False
        #: what stopped the held first states on their way into a run just created (a Ctrl-C, a copy that raised):
        #: the run lacks them, so it never ends ``complete`` and takes no more states
        self._lost_start: BaseException | None = None
        self._recording = threading.Lock()  # held by a record() call: another thread's at the same time is refused
        self._recording_started: float | None = None  # the first record() call
        self.status: str | None = None
        if resume and self._existing():
            self._reopen(every)
        else:
            self._refuse_existing()

    def _existing(self) -> bool:
        """Whether the run exists as more than a half-created run (one its creator left ``creating``: creating
        the run again replaces it)."""
        return self.root.exists(self.run_id) and not is_half_created(self.root, self.run_id)

    def _refuse_existing(self) -> None:
        if self._existing():
            raise UserError(f"run {self.run_id!r} already exists under {self.root.location}: choose another name, "
                            "or continue it with ModuleRecorder(..., resume=True)")

    # -- context manager ----------------------------------------------------------------------------
    def __enter__(self) -> "ModuleRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.recorder is None and exc_type is not None and (issubclass(exc_type, UserError) or not self._pending):
            self._closed = True  # a record() refused before the run exists, or an error before any record(): nothing
            self._unwatch()
            return  # is created (found by reviews: the exit made an empty `failed` run, refusing the script's name)
        if exc_type is not None and issubclass(exc_type, SystemExit) and exc.code in (None, 0):
            exc_type = None  # (sys.exit(0) in the block: the script ended well; found by a review)
        if exc_type is None:
            self.close("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")

    # -- recording ----------------------------------------------------------------------------------
    def record(self, **extra: Any) -> None:
        """Record the module's current state (and the named scalars/tensors in ``extra``).

        Call it once for the initial state and once after every optimizer step; with ``every=N`` only
        every N-th call is stored. Copies go to a buffer on the model's device (no host sync); on the CPU the
        call that fills a buffer also hands it to the store's write pool, which writes it in the background.
        """
        # (found by a review: two threads' calls interleaved their states, some rows never written)
        if not self._recording.acquire(blocking=False):
            raise UserError(f"run {self.run_id!r}: record() called from two threads at once; a run records one "
                            "sequence of states: call it from one thread (the training loop's)")
        try:
            self._record_call(extra)
        finally:
            self._recording.release()

    def _record_call(self, extra: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError(f"run {self.run_id!r}: record() after close()")
        self._refuse_after_lost_start()
        if self._recording_started is None:
            self._recording_started = time.perf_counter()
        values = {name: _extra_tensor(name, v) for name, v in extra.items()}
        if self.recorder is None:
            for name, value in values.items():
                self._extras_seen.setdefault(name, value)
        else:
            unknown = sorted(set(values) - set(self.specs))
            if unknown:
                raise UserError(
                    f"record({unknown[0]}=...) is new at step {self.step}: a run's variables are fixed by its first "
                    "two record() calls; pass it from the start (it may be missing from some calls)")
        step, self.step = self.step, self.step + 1
        if step % self.every == 0:
            with torch.no_grad():
                state = self._state(values)
                if self.recorder is None:
                    self._pending.append((step, {n: t.clone() for n, t in state.items()}))
                else:
                    self._record(step, state)
        if self.recorder is None and step >= 1:  # the first two calls fixed the variables
            self._check_dims()
            try:
                with torch.no_grad():
                    self._start()
            except BaseException:
                # a run not created (or removed again): close() must not create it (found by a review). One created
                # whose held states failed to reach the recorder (a Ctrl-C, a copy that raised) is ended by close(),
                # `interrupted` or `failed` (found by a review: it was left `running`, as if its writer was killed)
                if self.recorder is None:
                    self._closed = True
                    self._unwatch()
                else:  # (found by a review: a caller that caught it recorded on, the held states silently lost,
                    self._lost_start = sys.exc_info()[1]  # and the run ended `complete`)
                raise

    def _refuse_after_lost_start(self) -> None:
        if self._lost_start is not None:
            raise RuntimeError(f"run {self.run_id!r}: its first states did not reach the store "
                               f"({type(self._lost_start).__name__}: {self._lost_start}): it takes no more; close() "
                               "ends it (or leave the `with` block), and a new run starts again")

    def _check_dims(self) -> None:
        """A ``dims`` name that is no recorded tensor nor extra is an error (a misspelt name would leave the
        variable with default dims), checked before the run is created: by :meth:`record`, and by a ``close()``
        that ends the run ``complete`` (a script's own error, which ends it ``failed``, is the one that comes
        out). Nothing is created, and the recorder is closed."""
        unknown = sorted(set(self.dims) - set(self.tracked) - set(self._extras_seen))
        if unknown:
            self._closed = True
            self._unwatch()
            raise UserError(f"dims names {', '.join(map(repr, unknown))}, neither a recorded tensor of the model nor "
                            f"an extra passed to record(): the names are "
                            f"{', '.join(list(self.tracked) + list(self._extras_seen))}")

    def _current(self) -> None:
        """Follow a tracked tensor the module now holds in its place (``load_state_dict(..., assign=True)``, a
        new ``nn.Parameter``, tied weights, a submodule replaced): recording the one found at construction would
        store stale values.
        One that is gone, or has another shape or dtype (``model.double()``), is a :class:`UserError`: the run's
        arrays are fixed."""
        owners: dict[str, Any] = {}
        for name, (role, tensor) in self.tracked.items():
            now = adapter.held(self.module, self._holders[name], owners)
            if now is tensor and tensor.dtype == self._tracked_dtypes[name] and \
                    tuple(tensor.shape) == self._tracked_shapes[name]:  # (``p.data = ...`` of another shape: a review)
                continue
            kind = "buffer" if role == "buffer" else "parameter"
            base = name[: -len(".grad")] if role == "gradient" else name
            if now is None:
                raise UserError(f"{kind} {base!r} is no longer in the module: the run records it at every step; keep "
                                f"it, or record without it (parameters=/buffers= patterns)")
            if tuple(now.shape) != self._tracked_shapes[name] or now.dtype != self._tracked_dtypes[name]:
                raise UserError(f"{kind} {base!r} is now {now.dtype} of shape {tuple(now.shape)}; the run records "
                                f"{self._tracked_dtypes[name]} of shape {self._tracked_shapes[name]}: cast or replace "
                                "tensors before creating the ModuleRecorder")
            self.tracked[name] = (role, now)

    def _watch_registrations(self) -> None:
        """Note when the module registers a parameter, buffer or submodule (torch's global registration hooks): the
        next recorded state then looks for tensors new since the recorder was made (:meth:`_refuse_added`), a walk
        of the module; a step with no registration costs one flag's test. The hooks hold the recorder weakly and go
        with it, or at :meth:`close`."""
        from torch.nn.modules import module as nn_module

        self._tree = {id(m) for m in self.module.modules()}  # (the module and its submodules, refreshed at a check)
        self._registered = False
        me = weakref.ref(self)

        def registered(owner, name, value) -> None:  # noqa: ARG001 - torch's hook signature
            recorder = me()
            if recorder is not None and id(owner) in recorder._tree:
                recorder._registered = True

        handles = [nn_module.register_module_parameter_registration_hook(registered),
                   nn_module.register_module_buffer_registration_hook(registered),
                   nn_module.register_module_module_registration_hook(registered)]
        self._unwatch = weakref.finalize(self, _remove_hooks, handles)

    def _refuse_added(self) -> None:
        """A tensor the recorder would record had it been there when it was made (a parameter or buffer the
        selection matches, added since or untied from the tensor it shared) is a :class:`UserError`: the run's
        arrays are fixed, and it would be left out without a word (found by a review: the run ended `complete`
        without it)."""
        self._tree = {id(m) for m in self.module.modules()}
        with warnings.catch_warnings():  # (a buffer left out is said when the recorder is made, not again)
            warnings.simplefilter("ignore")
            now = adapter.tracked(self.module, *self._selection)
        known = {id(tensor) for _, tensor in self.tracked.values()}
        for name, (role, tensor) in now.items():
            if name not in self.tracked and id(tensor) not in known:
                option = "buffers" if role == "buffer" else "parameters"
                raise UserError(f"{role} {name!r} is new in the module by step {self.step - 1} (added since the "
                                "recorder was made, or untied from a tensor it shared): the run records the tensors "
                                "the module had then, and would leave it out; make it before the ModuleRecorder, or "
                                f"leave it out with {option}=[...] patterns that do not match it")
        self._registered = False  # (only now: a refusal caught stands at every later record(), found by a review)

    def _state(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._current()
        if self._registered:
            self._refuse_added()
        state = {}
        for name, (role, tensor) in self.tracked.items():
            state[name] = tensor.grad if role == "gradient" else tensor
        state.update(values)
        # a sparse tensor (an nn.Embedding(sparse=True)'s gradient) is stored dense: its rows not touched are 0 (found
        # by a review: its copy raised torch's "copy_() between dense and sparse Tensors", uncaught)
        return {n: (t if t.layout is torch.strided else t.to_dense()).detach() for n, t in state.items()
                if t is not None}

    def _record(self, step: int, state: Mapping[str, torch.Tensor]) -> None:
        self._hand(self._values(step, state))

    def _hand(self, values: dict[str, Any]) -> None:
        """Give the recorder one state's checked values (growing the run first where it is full)."""
        index = self.recorder.index
        if index >= self.writer.capacity:
            self.writer.grow(max(2 * self.writer.capacity, index + self.writer.chunk_steps))
        self.recorder.record(**values)

    def _values(self, step: int, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """What the recorder is given for ``state``: a missing variable's fill, each extra checked against the run's
        dtype and shape (a :class:`UserError` naming it)."""
        values: dict[str, Any] = {"step": step}
        for name, spec in self.specs.items():
            if name == "step":
                continue
            value = state.get(name)
            if value is None:
                values[name] = adapter.fill_for(self._buffer_dtypes[name])
                continue
            if value.dtype != self._buffer_dtypes[name] and spec.role in ("tensor", "scalar") and \
                    torch.promote_types(value.dtype, self._buffer_dtypes[name]) != self._buffer_dtypes[name]:
                raise UserError(f"record({name}=...): a {value.dtype} value; the run stores {spec.dtype}, fixed by the "
                                f"first two record() calls: pass {name} as {spec.dtype} throughout")
            if spec.role in ("tensor", "scalar") and (inexact := _inexact_integer(value, self._buffer_dtypes[name])):
                # (found by reviews: an integer array's 2**60 + 1 went into a float64 scalar, an int64 tensor's
                # 2**24 + 1 into a float32 extra, rounded)
                big, bits = inexact
                hint = (f"pass {name} as a one-element integer array from its first record() call on (stored in its "
                        "own integer dtype)" if spec.role == "scalar" else
                        f"pass {name} in an integer dtype from its first record() call on (stored as such)")
                raise UserError(f"record({name}=...): the integer {big} is beyond 2**{bits}, past which the "
                                f"{spec.dtype} the run stores {name} as is not exact: {hint}")
            if spec.role in ("tensor", "scalar"):  # an extra of another shape (found by a review: a bare ValueError)
                try:
                    # (not ``fills``: a number given for a vector extra is no vector; found by a review, it was
                    # stored repeated; only a missing value is filled, above)
                    check_state_shape(name, tuple(value.shape), value.numel(), self._state_shapes[name])
                except ValueError:
                    raise UserError(f"record({name}=...): a value of shape {tuple(value.shape)}; the run stores "
                                    f"{name} as shape {self._state_shapes[name]}, fixed by the first two record() "
                                    f"calls: pass {name} in that shape throughout") from None
            values[name] = value
        return values

    # -- creation / resumption ----------------------------------------------------------------------
    def _start(self) -> None:
        """Create the run (variables: tracked tensors + the extras seen so far) and replay pending states."""
        self._refuse_existing()  # (another recorder, or script, made it since this one was created)
        state0 = {n: (t.grad if role == "gradient" and t.grad is not None else t)
                  for n, (role, t) in self.tracked.items()}
        specs = adapter.variables({n: (r, state0[n]) for n, (r, _) in self.tracked.items()}, self._extras_seen,
                                  self.dims)
        sizes: dict[str, int] = {}
        for name, spec in specs.items():
            tensor = state0.get(name, self._extras_seen.get(name))
            for dim, size in zip(spec.dims[1:], () if tensor is None else tensor.shape):
                if sizes.setdefault(dim, int(size)) != int(size):
                    raise UserError(f"dim {dim!r} has size {sizes[dim]} and {int(size)}: give the extra its own dims "
                                    f"(dims={{name: (...)}})")
        chunk_bytes = int(self.chunk_mib * 2**20) if self.chunk_mib else None
        from trajscope.store.layout import TARGET_CHUNK_BYTES, chunk_steps_for

        step_bytes = max(int(np.prod([sizes[d] for d in s.dims[1:]], dtype=np.int64)) * np.dtype(s.dtype).itemsize
                         for s in specs.values())
        chunk = chunk_steps_for(step_bytes, chunk_bytes or TARGET_CHUNK_BYTES)
        wanted = self.expected_steps // self.every + 1 if self.expected_steps else INITIAL_CHUNKS * chunk
        capacity = max(chunk, -(-wanted // chunk) * chunk)
        attrs = {
            "schema": adapter.schema(specs),
            "module": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
            "recording": self.options,
            "device": str(self.device),
            "user": self.user_attrs,
        }
        self._check_memory(chunk * sum(int(np.prod([sizes[d] for d in spec.dims[1:]], dtype=np.int64))
                                       * np.dtype(spec.dtype).itemsize for spec in specs.values()))
        # the held states checked before the run exists (found by a review: a value refused here after the run
        # was created left a `failed` run under the name, which the corrected script then could not take)
        self._layout(specs, {name: tuple(sizes[d] for d in spec.dims[1:]) for name, spec in specs.items()})
        checked = [self._values(step, state) for step, state in self._pending]
        self.writer = RunWriter.create(self.root, self.run_id, variables=specs, sizes=sizes, capacity=capacity,
                                       static={}, attrs=attrs, compressor=self.compressor, chunk_bytes=chunk_bytes,
                                       length_known=bool(self.expected_steps))
        try:
            self._begin(specs, start_index=0, preload=None)
        except BaseException:  # (the buffers could not be made: a run of no state is not left under the name)
            self._remove_new_run()
            raise
        self._pending = []
        for values in checked:
            self._hand(values)

    def _check_memory(self, chunk_bytes: int) -> None:
        """Refuse, before the run exists, chunk buffers that do not fit in the memory available (found by a review:
        numpy's MemoryError after the run was created, which left it ``running`` with no state)."""
        from trajscope.producer.budget import HEADROOM, available_memory, size_text
        from trajscope.producer.staging import default_buffers
        from trajscope.store.hotpath import default_write_threads

        buffers = self.queue_chunks or default_buffers(default_write_threads(self.root.is_local))
        available = available_memory()
        if buffers * chunk_bytes > HEADROOM * available:
            raise UserError(f"run {self.run_id!r}: the recorder's {buffers} chunk buffers need about "
                            f"{size_text(buffers * chunk_bytes)} of host memory, {size_text(available)} is available: "
                            "lower chunk_mib (a chunk holds at least one state) or queue_chunks (at least 2); nothing "
                            "was created")

    def _remove_new_run(self) -> None:
        """Delete the run this recorder has just created (no state recorded in it), under its lock."""
        lock, self.writer = self.writer.lock, None
        try:
            if not lock.held:
                lock.acquire()
            self.root.delete(self.run_id)
            lock.remove_file()
        except Exception:  # noqa: BLE001 - best effort: the run is then left as it is, its error raised
            pass
        finally:
            lock.release()

    def _layout(self, specs: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        """The run's variables, and each one's per-state shape and recording dtype."""
        self.specs = dict(specs)
        self._state_shapes = {name: tuple(shapes[name]) for name in self.specs if name != "step"}
        self._buffer_dtypes = {name: torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype
                               for name, spec in self.specs.items() if name != "step"}
        self._state_shapes["step"], self._buffer_dtypes["step"] = (), torch.int64

    def _begin(self, specs, *, start_index: int, preload) -> None:
        self._layout(specs, {name: tuple(array.shape[1:]) for name, array in self.writer.arrays.items()})
        shapes, dtypes = self._state_shapes, self._buffer_dtypes
        try:
            self.writer.set_write_options(io=write_io(self.io, self.root, self.device, self.compressor))
            self.recorder = Recorder(self.writer, shapes, dtypes, self.device, start_index=start_index,
                                     preload=preload, buffers=self.queue_chunks, flush_seconds=self.flush_seconds)
        except BaseException:
            self.writer.lock.release()
            raise

    def _reopen(self, every: int | None) -> None:
        found: dict[str, Any] = {}

        def check(attrs: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
            """This recorder fits the run: refused before the run is touched (found by a review: a resume refused
            here after the run was reopened had marked a finished run ``running`` and erased its end)."""
            schema = read_schema(attrs)
            if schema.get("kind") != MODULE:
                raise UserError(f"run {self.run_id!r} is a {schema.get('kind')} run, not a module run: "
                                "resume it with `trajscope resume`")
            options = attrs.get("recording") or {}
            stored_every = int(options.get("every", 1))
            if every is not None and int(every) != stored_every:
                raise UserError(f"every={every}: run {self.run_id!r} records every {stored_every}-th call; resume it "
                                f"with every={stored_every} (or leave every out)")
            stored = {n: v for n, v in schema["variables"].items()}
            same = ("resume with the same model and the same recording options (the run's: "
                    + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")")
            for name in self.tracked:
                if name not in stored:
                    raise UserError(f"run {self.run_id!r} has no variable {name!r}: {same}")
            untracked = sorted(n for n, v in stored.items()
                               if v.get("role") in ("parameter", "buffer", "gradient") and n not in self.tracked)
            if untracked:
                raise UserError(f"run {self.run_id!r} records {untracked[0]!r}, which this recorder does not: {same}")
            for name, (_, tensor) in self.tracked.items():
                shape = shapes[name][1:]
                if shape != tuple(tensor.shape):
                    raise UserError(f"{name}: the run stores shape {shape}, the module has {tuple(tensor.shape)}")
                dtype = adapter.stored_dtype(tensor.dtype)[0]
                if dtype != stored[name].get("dtype", dtype):
                    raise UserError(f"{name}: the run stores {stored[name]['dtype']}, the module has {tensor.dtype}: "
                                    "cast the model as it was recorded")
            found.update(every=stored_every, stored=stored)

        writer = RunWriter.reopen(self.root, self.run_id, check=check)
        try:
            self.every = self.options["every"] = found["every"]
            stored = found["stored"]
            committed = writer.committed_steps
            record_segment(writer, str(self.device))
            chunk_start = (committed // writer.chunk_steps) * writer.chunk_steps
            preload = writer.read_states(chunk_start, committed) if committed % writer.chunk_steps else None
            last = int(writer.arrays["step"][committed - 1]) if committed else -1
        except BaseException:
            writer.lock.release()
            raise
        from trajscope.store.layout import VariableSpec

        self.writer = writer
        specs = {n: VariableSpec(n, tuple(v["dims"]), v["dtype"], v["role"]) for n, v in stored.items()}
        self._begin(specs, start_index=committed, preload=preload)
        self.step = last + 1

    # -- resume helpers -----------------------------------------------------------------------------
    def last_state(self, load: bool = True) -> dict[str, torch.Tensor]:
        """The last committed state of the recorded parameters and buffers (on the CPU).

        With ``load=True`` they are copied into the module (``torch.no_grad``), so training continues
        from exactly the stored state; :attr:`step` is the step the next ``record()`` records.
        Optimizer state is not part of the run: restore it yourself.

        A run with no committed state (its script killed before the first chunk was full: a chunk holds up to
        1024 states; or, with ``resume=True``, a run that did not exist yet or was left half-created) returns
        ``{}`` and leaves the module as it is: :attr:`step` is 0, and the loop records the run from the start,
        as if it were new (found by a review: a new run raised here, and the ``with`` block's exit then
        created an empty ``failed`` run).
        """
        out: dict[str, torch.Tensor] = {}
        if self.writer is None or self.writer.committed_steps == 0:
            return out
        k = self.writer.committed_steps - 1
        self._current()
        for name, (role, tensor) in self.tracked.items():
            if role == "gradient":
                continue
            out[name] = torch.from_numpy(np.ascontiguousarray(self.writer.arrays[name][k]))
            if load:
                with torch.no_grad():
                    tensor.copy_(out[name].reshape(tensor.shape))
        return out

    def flush(self) -> None:
        """Hand the states recorded so far to the store now, without waiting for ``flush_seconds``; they are
        committed, and seen by live readers, within about 0.5 s. A model on the CPU needs it only to go faster: when
        the loop pauses (a long evaluation), the recorder's writer thread hands its chunk over once due. On a GPU a
        pause holds the chunk until the next ``record()`` or this. The first state is held until the second
        ``record()``, which fixes the run's variables."""
        if self._closed:
            raise RuntimeError(f"run {self.run_id!r}: flush() after close()")
        self._refuse_after_lost_start()
        if not self._recording.acquire(blocking=False):
            raise UserError(f"run {self.run_id!r}: flush() called while record() runs in another thread; call both "
                            "from the training loop's thread")
        try:
            if self.recorder is not None:
                self.recorder.flush()
        finally:
            self._recording.release()

    # -- the end --------------------------------------------------------------------------------------
    @property
    def committed_steps(self) -> int:
        """States a reader may trust so far."""
        return 0 if self.recorder is None else self.recorder.committed

    @property
    def store_wait_seconds(self) -> float:
        """Seconds :meth:`record` waited for the store so far: for a free chunk buffer whose chunk had
        reached host memory and was still being written (on a GPU, a wait for the device's own computation is
        the recorder's ``device_waited_seconds``). :meth:`close` adds nothing to it (its wait for the last
        writes is the recorder's ``closing_seconds``)."""
        return 0.0 if self.recorder is None else self.recorder.waited_seconds

    @property
    def location(self) -> str:
        """Path or URL of the run's ``.zarr`` group."""
        return self.root.run_url(self.run_id)

    def close(self, status: str = "complete", error: str | None = None) -> str:
        """Flush, commit everything recorded, end the run with ``status``; returns the run's location.

        Raises :class:`~trajscope.store.errors.RunFailed` when the last writes fail here although the loop ended
        well (the run is ended ``failed``), or when the run's end cannot be stored (a full disk)."""
        self._unwatch()
        if self._closed:
            return self.location
        if self.recorder is None and status == "complete":
            self._check_dims()
        self._closed = True
        raised_here = None
        if self.recorder is None:
            try:
                self._start()
            except BaseException as exc:  # (found by a review: a Ctrl-C here left a run just created `running`)
                if self.recorder is None:
                    raise
                self._lost_start = raised_here = exc  # the run exists: ended below, then this raised
        lost = self._lost_start
        if lost is not None and status == "complete":  # the held states are not in the run
            status = "interrupted" if isinstance(lost, KeyboardInterrupt) else "failed"
            error = None if status == "interrupted" else f"the first states did not reach the store: " \
                                                         f"{type(lost).__name__}: {lost}"
        interrupt, writer_failed, asked = None, False, status
        try:
            committed = self.recorder.close()
            if self.recorder.cut is not None and status == "complete":  # a Ctrl-C that record() raised was caught
                status = "interrupted"  # (and the loop ended well): the states from the cut on are not stored
        except KeyboardInterrupt as exc:  # while the last chunks were written: end the run, then stop
            if not self.recorder.stopped:  # a second Ctrl-C while its writer still runs: the run is left
                self.recorder.unlock_when_stopped()  # `running` (unlocked once the writer stops) for `resume`
                raise
            committed, interrupt = self.recorder.committed, exc
            status, error = self.recorder.outcome_of_interrupted_close(status, error)
        except Exception as exc:  # noqa: BLE001 - the writer failed: the run says so, and so does close()
            committed, status, error = self.recorder.committed, "failed", error or f"writer: {exc}"
            writer_failed = True
        last = int(self.writer.arrays["step"][committed - 1]) if committed else 0
        started = self._recording_started if self._recording_started is not None else time.perf_counter()
        waits = recording_waits(run_attr(self.writer.attrs, "recording_waits"), self.recorder,
                                time.perf_counter() - started)
        ends: dict = {"last_step": last, "recording_waits": waits}
        if committed:  # the run's length is what it recorded (its capacity was room to grow, not a planned length)
            ends["capacity"] = committed
            if "loss" in self.writer.arrays and self.writer.arrays["loss"].ndim == 1:  # (a number per state)
                ends["final_loss"] = float(self.writer.arrays["loss"][committed - 1])
        try:
            self.writer.finish(status, error, **ends)  # (releases the lock)
        except Exception as exc:  # e.g. a full disk, or a lost object store, took the final document too (a loop's
            if not is_storage_error(exc):  # own error stays its context)
                raise
            raise unstored_end(self.writer, status, error, committed, exc)
        self.status = status
        if raised_here is not None:
            raise raised_here
        if interrupt is not None:
            raise interrupt
        if writer_failed and asked == "complete":  # (a loop that raised gets its own error from __exit__)
            raise RunFailed(f"run {self.run_id!r} failed: {error} ({committed} states committed)")
        return self.location


def _remove_hooks(handles) -> None:
    for handle in handles:
        handle.remove()


def _count(option: str, value: Any, *, minimum: int, what: str) -> None:
    """An integer option (``None``: its default) of at least ``minimum``; anything else is a :class:`UserError`
    (``every=2.5`` was taken as 2)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{option}={value!r}: {what}, an integer of at least {minimum}")


def _inexact_integer(value: torch.Tensor, dtype: torch.dtype) -> tuple[int, int] | None:
    """An integer tensor going into a floating ``dtype`` of ``p`` significand bits (24 for float32, 53 for float64):
    ``(v, p)`` for a value ``v`` with ``|v| > 2**p``, which the float does not hold exactly; ``None`` when every value
    is exact. An integer dtype of at most ``p`` bits is exact by its dtype; a wider one is checked value by value on
    the CPU only (on a device that would wait for it)."""
    if value.dtype.is_floating_point or value.dtype is torch.bool or value.dtype.is_complex \
            or not dtype.is_floating_point:
        return None
    bits = round(-math.log2(torch.finfo(dtype).eps)) + 1  # (the significand: 24 for float32)
    info = torch.iinfo(value.dtype)
    if max(abs(info.min), info.max) <= 2**bits or value.device.type != "cpu" or value.numel() == 0:
        return None
    outside = value[(value > 2**bits) | (value < -(2**bits))]
    return (int(outside.reshape(-1)[0]), bits) if outside.numel() else None


def _extra_tensor(name: str, value: Any) -> torch.Tensor:
    """An extra passed to ``record(name=value)`` as a tensor; a value that is no number, array of numbers or
    tensor is a :class:`UserError` naming it."""
    validate_variable_name(name, f"record({name}=...): rename the extra")  # (before any run is made)
    try:
        tensor = adapter.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):  # (text, objects, ragged lists)
        tensor = None
    if tensor is None or tensor.is_complex():  # (a complex number would lose its imaginary part)
        raise UserError(f"record({name}=...): {type(value).__name__} {str(value)[:40]!r} is not a real number, an "
                        "array of real numbers or a real tensor")
    try:
        adapter.stored_dtype(tensor.dtype)
    except TypeError:  # (found by a review: a bare TypeError, raised twice, for uint16/32/64)
        raise UserError(f"record({name}=...): a {tensor.dtype} value, which a run cannot store: pass it as a real "
                        "floating, signed integer, uint8 or bool value") from None
    # a scalar is stored as float64, exact for integers up to 2**53 only (found by a review: 2**60 + 1 and
    # 2**60 + 3 were both stored as 2**60); checked where it costs no device sync: Python and CPU integers
    exact = 2**53
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and abs(int(value)) > exact:
        big = int(value)
    elif (isinstance(value, torch.Tensor) and value.ndim == 0 and value.device.type == "cpu"
          and not value.dtype.is_floating_point and value.dtype != torch.bool and abs(int(value)) > exact):
        big = int(value)
    else:
        return tensor
    raise UserError(f"record({name}=...): the integer {big} is beyond 2**53, past which the float64 a scalar is stored "
                    f"as is not exact: pass it as a one-element array ([{big}], stored in its own integer dtype)")
