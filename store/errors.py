"""Errors of trajscope. They live in ``store`` (which imports nothing of ours) so every layer can use them."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Something the user can fix (bad config, bad input, unknown run).

    The message is one line that says what is wrong and how to fix it; the CLI prints it without a
    traceback and the API turns it into a 4xx response.
    """


class RunNotFound(UserError, KeyError):
    """No run of that id under the store root."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class RunLocked(UserError):
    """Another writer holds the run."""


class RunNotReady(UserError):
    """A run still ``creating``: nothing of it can be read yet (HTTP 409). Its producer may be creating it right
    now, or may have died doing so (then creating the run again replaces it)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} is being created, or its producer stopped while creating it: nothing of it "
                         "can be read yet; open it again in a moment (if its producer is gone, `trajscope produce "
                         f"CONFIG --name {run_id}`, or a new ModuleRecorder of that name, replaces it)")


class RunFailed(RuntimeError):
    """A run ended ``failed`` (its writing failed, its training raised), or its end could not be stored.

    The message is one line: what failed and what is committed; the CLI prints it without a traceback (exit
    status 1). Everything committed stays readable, and ``resume`` continues the run once the cause is gone.
    """


class NotARun(UserError):
    """Something under a run's name that no trajscope run left (a Zarr v2 dataset, someone else's Zarr group, a
    user's files): never cleared or replaced. ``NotARun(location, why, instead)``: one line naming the way out."""

    def __init__(self, location: str, why: str, instead: str = "choose another name", *, reading: bool = False) -> None:
        if reading:  # asked to open it as a run
            super().__init__(f"{location} is not a trajscope run ({why}): open it with xarray (xr.open_zarr) or zarr")
        else:
            super().__init__(f"{location} is in the way and is not a trajscope run ({why}): move it away or "
                             f"{instead}; nothing was changed")


class MalformedRun(UserError):
    """A run's group document that readers cannot use (not a JSON object, a trajscope attribute of the wrong
    type: :mod:`trajscope.store.document`). ``MalformedRun(run_id, why)``: one line naming the field."""

    def __init__(self, run_id: str, why: str) -> None:
        super().__init__(f"run {run_id!r} cannot be read: {why} (a zarr.json trajscope did not write, or one edited "
                         "by hand): restore it from a copy, or delete the run (`trajscope rm`)")


class PathOutsideRoot(UserError):
    """A key of a run resolves (through a symbolic link) outside the store root; it is never opened."""


@dataclass(frozen=True)
class CorruptChunk:
    """One chunk whose checksum fails, or (``missing``) a committed chunk that is not stored at all: its
    variable, key and the steps it holds (if any)."""

    variable: str
    key: str
    steps: tuple[int, int] | None = None  # [first, last] state index the chunk covers
    missing: bool = False

    def describe(self) -> str:
        where = f" (states {self.steps[0]}–{self.steps[1]})" if self.steps else ""
        return f"{self.key}{where}"


class CorruptData(Exception):
    """Stored data of a run fails its checksum, or a committed chunk is not stored: it is never returned as
    numbers.

    Not a :class:`UserError`: the request was fine, the stored bytes are not. ``chunks`` lists the failing
    chunks found (may be empty when the bytes changed again since).
    """

    def __init__(self, run_id: str, chunks: list[CorruptChunk]):
        self.run_id = run_id
        self.chunks = chunks
        if chunks:
            names = ", ".join(c.describe() for c in chunks[:4]) + (" …" if len(chunks) > 4 else "")
            metadata = all(c.key.endswith("zarr.json") for c in chunks)
            failure = ("is missing or unreadable" if metadata
                       else "is missing (committed, but not stored)" if all(c.missing for c in chunks)
                       else "fails its crc32c checksum or is missing" if any(c.missing for c in chunks)
                       else "fails its crc32c checksum")
            what = (f"variable {', '.join(sorted({c.variable for c in chunks}))}: {'metadata' if metadata else 'chunk'} "
                    f"{names} {failure}")
        else:
            what = "a chunk failed its crc32c checksum while it was read"
        super().__init__(f"run {run_id!r} has corrupt stored data: {what}; the data is not served. "
                         f"Check the run with `trajscope fsck {run_id}` and restore it or record it again")

    def __reduce__(self):  # picklable (a dask task's error crossing processes): the arguments, not the message
        return (type(self), (self.run_id, self.chunks))

    @property
    def variables(self) -> list[str]:
        return sorted({c.variable for c in self.chunks})


_OBJECT_STORE_CLIENTS = ("botocore", "aiobotocore")


def _raised_by_object_store_client(exc: BaseException) -> bool:
    """Whether ``exc`` is botocore's (its class) or was raised inside it (its innermost frame): a builtin error
    such as ``ValueError('Invalid endpoint: s3:5000')`` for a malformed ``AWS_ENDPOINT_URL``."""
    if type(exc).__module__.split(".")[0] in _OBJECT_STORE_CLIENTS:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in _OBJECT_STORE_CLIENTS


def object_store_error(err: BaseException) -> str | None:
    """One line for an object store's refusal (no credentials, access denied, no endpoint, a malformed endpoint:
    botocore's errors, which s3fs lets through), ``None`` for any other error."""
    for exc in (err, err.__cause__, err.__context__):
        if exc is not None and _raised_by_object_store_client(exc):
            message = " ".join(str(exc).split())
            # a missing bucket is no refusal to check the credentials for (found by a review)
            if "NoSuchBucket" in message or type(exc).__name__ == "NoSuchBucket":
                return (f"the store root's bucket does not exist at the object store ({message}): create it, or "
                        "check the bucket's name and AWS_ENDPOINT_URL")
            if "Timeout" in type(exc).__name__:  # botocore's ReadTimeoutError, ConnectTimeoutError: no answer
                return (f"the object store did not answer ({type(exc).__name__}: {message}), however often it was "
                        "asked: check AWS_ENDPOINT_URL and that its server is up and reachable from here")
            return (f"the object store refused the request or could not be reached ({type(exc).__name__}: {message}): "
                    "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws), "
                    "AWS_ENDPOINT_URL and the bucket of the store root")
    return None


def is_storage_error(err: BaseException) -> bool:
    """Whether ``err`` is the storage's failing (an ``OSError``: a full disk, a lost file system; or an object
    store's refusal, :func:`object_store_error`), not a bug."""
    return isinstance(err, OSError) or object_store_error(err) is not None
