"""A store root: a local directory or any fsspec URL, and the runs under it.

:class:`StoreRoot` is the single place that turns a root and a run id into a Zarr store, reads and
writes whole metadata documents atomically, and lists runs.

On a local root nothing is read whose resolved path leaves the root (see :mod:`trajscope.store.safe`):
``read_bytes``, the read side of ``zarr_store``, ``run_ids`` and ``size_bytes`` refuse or skip links out of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec

from trajscope.store.dataset_attrs import decode_attrs
from trajscope.store.document import check_run_document
from trajscope.store.errors import MalformedRun, NotARun, PathOutsideRoot, RunNotFound, UserError
from trajscope.store.layout import (ALL_CHUNKS_STORED_KEY, DELETING_KEY, EARLY_RUN_MEMBERS, EARLY_RUN_W_DIMS,
                                     LOCK_DIR, RUN_SUFFIX, TEMPORARY_PREFIX, is_foreign_group, validate_run_id)
from trajscope.store.safe import is_inside, read_inside, tree_size, zarr_store_holding

DEFAULT_ROOT = "runs"
#: a file :meth:`StoreRoot.write_file` writes beside the runs (a sweep's table): one plain file name
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}"
#: the URL schemes whose first path component is a bucket (or container)
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
ROOT_ENV = "TRAJSCOPE_ROOT"


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


#: the largest root document (``zarr.json``) a run is read with: the consolidated metadata of a model of
#: thousands of parameters is a few MiB; a larger file is not a run's (and is not read whole)
MAX_DOCUMENT_BYTES = 64 * 2**20


def attrs_document(attrs: dict[str, Any]) -> bytes:
    """A run's group ``zarr.json`` holding ``attrs`` (no consolidated metadata), as :meth:`StoreRoot.write_attrs`
    writes it."""
    document = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    return json.dumps(document, indent=2, allow_nan=False).encode()


def _connection_noise(loop: Any, context: dict[str, Any]) -> None:
    """An event loop's exception handler that drops what an HTTP client's tasks leave when an object store drops
    their connections ("Task exception was never retrieved": aiohttp's ``ClientConnectionError``, ``OSError``);
    the request that failed raises its own error, which the CLI prints as one line. Anything else goes to the
    loop's default handler."""
    exc = context.get("exception")
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "aiohttp":
        return
    loop.default_exception_handler(context)


def quiet_connection_noise(loop: Any) -> None:
    """Install :func:`_connection_noise` on ``loop`` (fsspec's I/O loop of an async file system; found by a review:
    an S3 outage printed 51 to 169 ten-line aiohttp tracebacks before the one-line error)."""
    if loop is not None and hasattr(loop, "set_exception_handler") and loop.get_exception_handler() is None:
        loop.set_exception_handler(_connection_noise)


#: how an ``s3://`` root's requests are retried. s3fs tries a request 5 times (its class attribute ``retries``,
#: which no storage option sets), and botocore, in its default "legacy" mode, 5 times within each: an endpoint
#: that accepted connections and never answered held a listing for 411 s with nothing printed (s3fs reads with a
#: 15 s timeout: 25 attempts). A root's file systems get :data:`S3_ATTEMPTS` attempts of
#: s3fs (:func:`bound_attempts`; they also retry a response body cut mid-read, which botocore cannot) around
#: :data:`S3_BOTOCORE_RETRIES`: botocore's "standard" mode, the AWS SDKs' (exponential backoff with jitter,
#: throttling and 5xx answers retried), with 5 attempts, unless ``storage_options["config_kwargs"]``, the
#: environment (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``) or the AWS config file's profile set retries. Such an
#: endpoint fails after 10 reads (166 s), and a PUT answered ``503 SlowDown`` every time gives up after 17–21 s
#: (34–43 s before; a few seconds with 3 botocore attempts: found by a review): ``bench/s3_retries.py``.
S3_ATTEMPTS = 2
S3_BOTOCORE_RETRIES = {"mode": "standard", "total_max_attempts": 5}


def bound_attempts(fs: Any) -> Any:
    """``fs`` with s3fs's attempts per request set to :data:`S3_ATTEMPTS` when it is an s3fs file system."""
    if type(fs).__module__.split(".")[0] == "s3fs":
        fs.retries = S3_ATTEMPTS
    return fs


def _retries_configured() -> bool:
    """Whether the environment or the AWS config file's profile sets botocore's retries (found by a review: a
    profile's ``retry_mode``/``max_attempts`` were overridden)."""
    if {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):
        return True
    try:
        import botocore.session

        profile = botocore.session.get_session().get_scoped_config()
    except Exception:  # noqa: BLE001 - no botocore, a profile that does not exist: botocore says so when used
        return False
    return "retry_mode" in profile or "max_attempts" in profile


def bounded_retries(protocol: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """``storage_options`` with botocore's retries (:data:`S3_BOTOCORE_RETRIES`) filled in for an S3 URL where
    neither they nor the environment or profile set them (:func:`_retries_configured`); unchanged for any other
    protocol."""
    if protocol not in ("s3", "s3a"):
        return storage_options
    options = dict(storage_options)
    if not _retries_configured():
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(S3_BOTOCORE_RETRIES))
        options["config_kwargs"] = config
    return options


def default_location() -> str:
    """Where ``StoreRoot(None)`` lies: ``$TRAJSCOPE_ROOT``, else ``./runs`` (a local one resolved), without the
    checks a root is made with (a hint naming the default root must not fail where that root could not be used:
    found by a review, ``ls --root GOOD`` failed from inside a Zarr store)."""
    location = os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    if location.startswith("file://"):
        location = location[len("file://"):]
    return location.rstrip("/") if _is_url(location) else str(Path(location).expanduser().resolve())


def command_for(verb: str, run_id: str, root_location: str) -> str:
    """``trajscope VERB RUN``, with ``--root`` unless the run is under the default root (a hint without it names no
    run from elsewhere: found by reviews)."""
    import shlex

    root = "" if root_location == default_location() else f" --root {shlex.quote(root_location)}"
    return f"trajscope {verb} {run_id}{root}"


class StoreRoot:
    """A directory of runs, local (``./runs``) or remote (``s3://bucket/prefix``, ``memory://x``).

    Parameters
    ----------
    location
        Local path or fsspec URL; ``None`` means ``$TRAJSCOPE_ROOT`` or ``./runs``.
    storage_options
        Passed to fsspec for remote roots (credentials, ``endpoint_url``...).
    """

    def __init__(self, location: str | os.PathLike | None = None, storage_options: dict | None = None):
        location = os.fspath(location) if location is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
        if not location.strip():
            raise UserError("the store root is empty: give --root (or $TRAJSCOPE_ROOT) a folder or a URL")
        if location.startswith("file://"):
            location = location[len("file://") :]
        self.is_local = not _is_url(location)
        if self.is_local and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/(?!/)", location):  # (a folder "s3:" made here)
            protocol, _, rest = location.partition(":/")
            raise UserError(f"the store root {location!r} looks like a URL with one slash: write "
                            f"{protocol}://{rest.lstrip('/')} (or ./{location} for a local folder of that name)")
        if not self.is_local and not location.partition("://")[2].strip("/"):
            raise UserError(f"the store root {location!r} names no bucket or path: give e.g. "
                            f"{location.partition('://')[0]}://BUCKET/prefix")
        if not self.is_local and "//" in location.partition("://")[2].rstrip("/"):
            # found by a review: s3fs wrote the objects of s3://b//p under the key "/p", which its listing never
            # shows: a whole run recorded that nothing could open, repair or delete
            protocol, _, rest = location.partition("://")
            tidy = "/".join(part for part in rest.split("/") if part)
            raise UserError(f"the store root {location!r} has an empty path component (two slashes in a row): "
                            f"write {protocol}://{tidy}")
        self.storage_options = bounded_retries(location.partition("://")[0] if not self.is_local else "",
                                               dict(storage_options or {}))
        if self.is_local:
            self.location = str(Path(location).expanduser().resolve())
            if os.path.exists(self.location) and not os.path.isdir(self.location):
                raise UserError(f"the store root {self.location} is a file, not a folder: give --root (or "
                                f"${ROOT_ENV}) a folder; a missing one is made")
            inside = zarr_store_holding(self.location)
            if inside is not None:  # found by a review: runs recorded there went with the outer run's `rm`
                raise UserError(f"the store root {self.location} lies inside the Zarr store {inside} (a run, an "
                                f"export...): its folder holds its own arrays, not runs; give --root (or ${ROOT_ENV}) "
                                f"the folder that holds it, {inside.parent}, or another folder")
            self.fs = fsspec.filesystem("file")
        else:
            self.location = location.rstrip("/")
            try:
                self.fs, _ = fsspec.core.url_to_fs(self.location, **self.storage_options)
            except ValueError as err:  # fsspec's "Protocol not known: foo"
                raise UserError(f"cannot open the store root {self.location!r}: {err} (a folder, or an fsspec URL "
                                "such as s3://bucket/prefix)") from None
            except ImportError as err:  # fsspec's "Install s3fs to access S3": a fix for the user, not a bug
                raise UserError(f"cannot open the store root {self.location!r}: {err} "
                                "(for s3:// roots: pip install 'trajscope[s3]')") from None
            quiet_connection_noise(getattr(self.fs, "loop", None))
            bound_attempts(self.fs)

    def __repr__(self) -> str:
        return f"StoreRoot({self.location!r})"

    # -- paths ------------------------------------------------------------------------------------
    def run_url(self, run_id: str) -> str:
        """Path or URL of a run's group."""
        validate_run_id(run_id)
        return f"{self.location}/{run_id}{RUN_SUFFIX}"

    def _fs_path(self, run_id: str, key: str = "") -> str:
        url = self.run_url(run_id) + (f"/{key}" if key else "")
        return url if self.is_local else self.fs._strip_protocol(url)

    def zarr_store(self, run_id: str, *, read_only: bool = False):
        """A zarr-python v3 store rooted at the run's group (local roots: reads never leave the root)."""
        from zarr.storage import FsspecStore

        if self.is_local:
            from trajscope.store.safe import RootedLocalStore

            return RootedLocalStore(self.run_url(run_id), base=self.location, read_only=read_only)
        store = FsspecStore.from_url(
            self.run_url(run_id), storage_options=self.storage_options or None, read_only=read_only
        )
        bound_attempts(store.fs)
        return store

    def exists(self, run_id: str) -> bool:
        """True when the run's group metadata exists (asked of the store, not of a listing fsspec cached)."""
        path = self._fs_path(run_id, "zarr.json")
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def document_stamp(self, run_id: str) -> tuple[int, int, int] | None:
        """Identity of a local run's document ``zarr.json`` (inode, mtime in ns, size), which every commit replaces;
        ``None`` on an object store. :class:`FileNotFoundError` when it is gone."""
        if not self.is_local:
            return None
        st = os.stat(self._fs_path(run_id, "zarr.json"))
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def run_ids(self) -> list[str]:
        """Ids of the runs under the root (entries named ``*.zarr`` with group metadata), sorted."""
        base = self.location if self.is_local else self.fs._strip_protocol(self.location)
        if not self.is_local:  # fsspec caches listings (s3fs's never expire): a run made since would stay unseen
            self.fs.invalidate_cache(base)
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        ids = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if self.is_local and not is_inside(self.location, os.path.join(self.location, name, "zarr.json")):
                continue  # the run, or its root document, links out of the root: never listed, never read
            if name.endswith(RUN_SUFFIX):
                run_id = name[: -len(RUN_SUFFIX)]
                try:
                    validate_run_id(run_id)
                except UserError:
                    continue
                ids.append(run_id)
        return sorted(ids)

    # -- whole documents ----------------------------------------------------------------------------
    def read_bytes(self, run_id: str, key: str, *, limit: int | None = None) -> bytes:
        """The bytes of one key of a run's store (``zarr.json``, ``W/zarr.json``, ``W/c/0/0/0``...); with
        ``limit``, at most its first ``limit + 1`` bytes (so a caller can tell a key over the limit).

        :class:`KeyError` when absent; on a local root :class:`PathOutsideRoot` when the key resolves
        outside the root.
        """
        path = self._fs_path(run_id, key)
        try:
            if self.is_local:
                from zarr.abc.store import RangeByteRequest

                window = None if limit is None else RangeByteRequest(0, limit + 1)
                return read_inside(self.location, path, f"key {key!r} of run {run_id!r}", window)
            return self.fs.cat_file(path, **({} if limit is None else {"start": 0, "end": limit + 1}))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def has_key(self, run_id: str, key: str) -> bool:
        """Whether a key of a run's store exists now (nothing is read; an object store is asked, not the
        listing fsspec may have cached before the key was written)."""
        path = self._fs_path(run_id, key)
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def write_bytes(self, run_id: str, key: str, data: bytes, *, durable: bool = False,
                    if_match: str | None = None) -> str | None:
        """Replace one key atomically: local files are written to a temporary file, then renamed. Returns the
        object's new ETag on an object store that gives one (else ``None``); ``if_match`` (object stores) writes
        only over the object of that ETag (``If-Match``: the store refuses it, ``OSError``, when another writer
        replaced the object since).

        The file gets the mode a plain ``open`` would give it (``0o666`` less the umask), so readers running
        as another user (a server's container) can read it. ``durable`` (durability ``fsync``, local roots):
        the temporary file is fsynced before the rename and the directory after it, so after a power loss
        the key holds the old or the new bytes, never an empty file.
        """
        path = self._fs_path(run_id, key)
        if not self.is_local:
            result = self.fs.pipe_file(path, data, **({"IfMatch": if_match} if if_match else {}))
            return result.get("ETag") if isinstance(result, dict) else None
        _replace_file(path, data, durable=durable)
        return None

    def check_file_name(self, name: str) -> None:
        """A :class:`UserError` unless :meth:`write_file` can write ``name``: one file name of :data:`FILE_NAME`
        that is no run's (not ``*.zarr``), with no folder of that name in the way on a local root. A sweep asks
        before it trains (found by a review: a folder in the table's way was said after all the training)."""
        if not re.fullmatch(FILE_NAME, name) or name.endswith(RUN_SUFFIX):
            raise UserError(f"cannot write {name!r} beside the runs: give a plain file name of A-Z a-z 0-9 . _ -, "
                            f"starting with a letter or digit, not ending in {RUN_SUFFIX}")
        path = os.path.join(self.location, name)
        if self.is_local and os.path.isdir(path) and not os.path.islink(path):  # (a review: IsADirectoryError)
            raise UserError(f"cannot write {path}: a folder of that name is in the way; move it")
        # a missing bucket, before a sweep trains every point into it (found by a review); asked only of a root
        # that lists nothing, as read_group_metadata does
        bucket = None if self.is_local or self.run_ids() else self.missing_bucket()
        if bucket is not None:
            raise UserError(f"no bucket {bucket!r} at the object store of {self.location}: create it, or check "
                            "its name and AWS_ENDPOINT_URL")

    def write_file(self, name: str, data: bytes) -> str:
        """Write ``name``, a plain file beside the runs (a sweep's table), replacing it atomically as
        :meth:`write_bytes` does; returns its path or URL. ``name`` is one file name of :data:`FILE_NAME` that
        is no run's (not ``*.zarr``), else :class:`UserError`."""
        self.check_file_name(name)
        if not self.is_local:
            url = f"{self.location}/{name}"
            self.fs.pipe_file(self.fs._strip_protocol(url), data)
            return url
        os.makedirs(self.location, exist_ok=True)
        path = os.path.join(self.location, name)
        _remove_stale_temporaries(self.location, f"{TEMPORARY_PREFIX}{name}-")
        _replace_file(path, data, durable=False, prefix=f"{TEMPORARY_PREFIX}{name}-")
        return path

    def read_group_metadata(self, run_id: str, *, checked: bool = True) -> dict[str, Any]:
        """The run's group ``zarr.json`` (fresh, never cached); :class:`RunNotFound` when absent.

        ``checked`` (readers): :class:`~trajscope.store.errors.MalformedRun` when no reader can use it
        (:mod:`trajscope.store.document`). Unchecked (what deletes a run: it must go whatever it holds), a
        document that is not JSON, or not an object, reads as ``{}``."""
        try:
            raw = self.read_bytes(run_id, "zarr.json", limit=MAX_DOCUMENT_BYTES)
        except KeyError:
            # (found by a review: a mistyped bucket said "no run"; asked only of a root that lists nothing, as a
            # bucket-level call a prefix-scoped policy refuses reads as a missing bucket)
            bucket = None if self.is_local or self.run_ids() else self.missing_bucket()
            raise RunNotFound(f"no run {run_id!r} under {self.location}: " + (
                f"there is no bucket {bucket!r} at its object store (check its name, or AWS_ENDPOINT_URL)"
                if bucket is not None else "`trajscope ls` lists the runs")) from None
        if len(raw) > MAX_DOCUMENT_BYTES:  # (found by a review: a 2 GB file was read whole on every request)
            if not checked:
                return {}
            raise MalformedRun(run_id, f"its zarr.json is over {MAX_DOCUMENT_BYTES // 2**20} MiB, more than any run "
                                       "document holds")
        try:
            document = json.loads(raw)
        except ValueError:  # (UnicodeDecodeError is one)
            if not checked:
                return {}
            raise MalformedRun(run_id, "its zarr.json is not JSON") from None
        if not checked:
            return document if isinstance(document, dict) else {}
        return check_run_document(run_id, document)

    def read_attrs(self, run_id: str, *, checked: bool = True) -> dict[str, Any]:
        """The run's root attributes (``checked``: see :meth:`read_group_metadata`)."""
        attrs = self.read_group_metadata(run_id, checked=checked).get("attributes", {})
        # nested again where a copy holds them as JSON text (a `ds.to_zarr` of an opened run, an export): the
        # writers iterate `time_variables` (found by a review: resuming or repairing such a copy crashed)
        return decode_attrs(attrs) if isinstance(attrs, dict) else {}

    def write_attrs(self, run_id: str, attrs: dict[str, Any], *, durable: bool = False) -> str | None:
        """Write the group ``zarr.json`` with these attributes in one atomic write (fsynced: ``durable``); the
        ETag returned: see :meth:`write_bytes`.

        Any consolidated metadata is dropped: it is written again when the run finishes.
        """
        return self.write_bytes(run_id, "zarr.json", attrs_document(attrs), durable=durable)

    def size_bytes(self, run_id: str) -> int:
        """Bytes the run occupies (local roots: regular files only, never through a link)."""
        if self.is_local:
            return tree_size(self.location, self._fs_path(run_id))
        path = self._fs_path(run_id)
        self.fs.invalidate_cache(path)  # (a stale listing named objects replaced since, and du raised for them)
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:  # deleted meanwhile
            return 0

    def delete(self, run_id: str) -> None:
        """Remove a run and everything under it (a run that is a link inside the root: the link only; what is
        left of a run whose deletion stopped after its root document: that)."""
        path = self._fs_path(run_id)
        if not self.exists(run_id):
            if self.has_leftovers(run_id):
                self.remove_leftovers(run_id)  # a deletion stopped half-way: finished now
                return
            raise RunNotFound(f"no run {run_id!r} under {self.location}")
        if self.is_local and not is_inside(self.location, path):
            raise PathOutsideRoot(f"run {run_id!r} resolves outside the store root; remove the link by hand")
        if self.is_local and os.path.islink(path):  # the run is this link: the run it points at (inside the
            os.unlink(path)  # root) is another, left as it is
            return
        # the root document first: from then on a reader finds no run (RunNotFound), never a run losing its
        # chunks one by one (an object store removes keys in batches, a local rmtree in directory order); the
        # marker before it, so what a deletion stopped half-way leaves is known for a run's (has_leftovers)
        self.write_bytes(run_id, DELETING_KEY, b"")
        self.fs.rm(self._fs_path(run_id, "zarr.json"))
        self.remove_leftovers(run_id)

    def missing_bucket(self) -> str | None:
        """The bucket of an object-store root (``s3://``, ``gs://``...) when it does not exist, else ``None``
        (a listing of a missing bucket and of an empty prefix look alike)."""
        if self.is_local or self.location.split("://", 1)[0] not in BUCKET_PROTOCOLS:
            return None
        bucket = self.fs._strip_protocol(self.location).split("/", 1)[0]
        if not bucket:
            return None
        self.fs.invalidate_cache(bucket)
        return None if self.fs.exists(bucket) else bucket

    def members(self, run_id: str) -> set[str]:
        """The names in the group under ``run_id`` besides its root document and trajscope's markers (arrays,
        sub-groups, files)."""
        own = {"zarr.json", DELETING_KEY, ALL_CHUNKS_STORED_KEY}
        try:
            if self.is_local:
                entries = os.listdir(self._fs_path(run_id))
            else:
                entries = self.fs.ls(self._fs_path(run_id), detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries} - own

    def holds_an_early_run(self, run_id: str) -> bool:
        """Whether the group under ``run_id`` holds nothing, or only the arrays an early trajscope made as it
        began a two-layer run, its ``W`` among them (:data:`~trajscope.store.layout.EARLY_RUN_MEMBERS`)."""
        names = self.members(run_id)
        if not names:
            return True
        if not names <= EARLY_RUN_MEMBERS or "W" not in names:
            return False
        try:
            w = json.loads(self.read_bytes(run_id, "W/zarr.json"))
        except (KeyError, ValueError, OSError):
            return False
        return isinstance(w, dict) and w.get("dimension_names") == EARLY_RUN_W_DIMS

    def is_foreign(self, run_id: str, attrs: dict[str, Any]) -> bool:
        """Whether the group under ``run_id``, of root attributes ``attrs``, is someone else's
        (:func:`~trajscope.store.layout.is_foreign_group`)."""
        return is_foreign_group(attrs, lambda: self.holds_an_early_run(run_id))

    def has_leftovers(self, run_id: str) -> bool:
        """Whether what is under the run's name is what a deletion stopped half-way left of a run: no root
        document, and one of the run's own markers (:data:`DELETING_KEY`, which :meth:`delete` writes first
        and :meth:`remove_leftovers` removes last, or :data:`ALL_CHUNKS_STORED_KEY`), or an empty folder.
        Any other folder named ``*.zarr`` (a Zarr v2 dataset, a user's files) is not, nor a local link."""
        if self.exists(run_id):
            return False
        path = self._fs_path(run_id)
        if self.is_local and (os.path.islink(path) or not os.path.isdir(path)):
            return False
        if self.is_local and not os.listdir(path):  # emptied, its folder left: nothing in it to lose
            return True
        return self.has_key(run_id, DELETING_KEY) or self.has_key(run_id, ALL_CHUNKS_STORED_KEY)

    def clear_for_create(self, run_id: str) -> None:
        """Before a run is created under ``run_id`` (its writer lock held, no root document there): remove what
        a stopped deletion left (:meth:`has_leftovers`) or a stopped creation (an empty folder, or one holding
        only temporary files); refuse anything else under that name, a folder that is not a run's (UserError)."""
        path = self._fs_path(run_id)
        if self.is_local:
            if os.path.islink(path):
                raise PathOutsideRoot(f"run {run_id!r} is a link; remove the link by hand")
            if not os.path.lexists(path):
                return
            # what create writes before its root document: the folder, then temporary files in it (write_bytes)
            stopped_creation = os.path.isdir(path) and all(
                entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False)
                for entry in os.scandir(path))
        else:  # (an object store's create writes its root document first: nothing before it)
            self.fs.invalidate_cache(path)
            stopped_creation = not self.fs.find(path)
        if stopped_creation or self.has_leftovers(run_id):
            self.remove_leftovers(run_id)
            return
        raise NotARun(self.run_url(run_id), "no zarr.json, none of a run's markers")

    def remove_leftovers(self, run_id: str) -> None:
        """Remove what is left of a run without its root document (a deletion stopped half-way), if anything:
        its markers last, so a removal stopped again still leaves a folder :meth:`has_leftovers` knows."""
        path = self._fs_path(run_id)
        if self.is_local and os.path.islink(path):  # never followed: what it points at is not the run's
            raise PathOutsideRoot(f"run {run_id!r} is a link; remove the link by hand")
        if not self.is_local:
            self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return
        markers = [self._fs_path(run_id, key) for key in (DELETING_KEY, ALL_CHUNKS_STORED_KEY)]
        if self.is_local:
            if not os.path.isdir(path):
                raise UserError(f"{path} is not a run's folder; remove it by hand")
            for entry in [e.path for e in os.scandir(path) if e.path not in markers] + markers:
                if os.path.lexists(entry):
                    _remove_entry(entry)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)
            return
        rest = [key for key in self.fs.find(path) if key not in markers]
        if rest:
            self.fs.rm(rest)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- space --------------------------------------------------------------------------------------
    def free_bytes(self) -> int | None:
        """Free bytes on the file system of a local root (of its nearest existing parent, before the root is made);
        ``None`` for an object store."""
        path = self._nearest_existing()
        return None if path is None else shutil.disk_usage(path).free

    def pseudo_file_system(self) -> str | None:
        """The nearest existing parent of a local root when its file system has no blocks at all (``/proc``,
        ``/sys``: nothing can be stored there, whatever it reports free); ``None`` otherwise."""
        path = self._nearest_existing()
        try:
            return path if path is not None and os.statvfs(path).f_blocks == 0 else None
        except OSError:
            return None

    def _nearest_existing(self) -> str | None:
        if not self.is_local:
            return None
        path = self.location
        while not os.path.exists(path):
            if os.path.dirname(path) == path:
                return None
            path = os.path.dirname(path)
        return path

    # -- locks --------------------------------------------------------------------------------------
    def lock_path(self, run_id: str) -> str:
        """Local lock file of a run's writer (local roots only)."""
        validate_run_id(run_id)
        return os.path.join(self.location, LOCK_DIR, f"{run_id}.lock")


def _replace_file(path: str, data: bytes, *, durable: bool, prefix: str = TEMPORARY_PREFIX) -> None:
    """Write a local file atomically: a temporary file (named ``prefix...``) in its folder (made if missing),
    renamed over it. The file gets the mode a plain ``open`` would give it; ``durable``: the temporary file is
    fsynced before the rename and the folder after it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0o600
            except OSError:  # a file system without modes (vfat...): its own stand
                pass
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        from trajscope.store.chunkio import fsync_dir

        fsync_dir(directory)


#: a temporary file of :meth:`StoreRoot.write_file` this old was left by a writer that was killed
STALE_TEMPORARY_SECONDS = 3600.0


def _remove_stale_temporaries(folder: str, prefix: str) -> None:
    """Remove the files ``prefix*`` of ``folder`` older than :data:`STALE_TEMPORARY_SECONDS`: what a writer of
    the same file killed while writing left (found by a review: nothing removed them). A writer of it now, whose
    temporary file is seconds old, is left alone."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY_SECONDS:
                        os.unlink(entry.path)


def _remove_entry(path: str) -> None:
    """Remove one entry of a local run folder, if it is still there: a folder with everything under it, or a
    file or a link (links are removed, never followed)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def resolve_run(run: str | os.PathLike, root: str | os.PathLike | StoreRoot | None = None,
                storage_options: dict | None = None) -> tuple[StoreRoot, str]:
    """Turn ``run`` (a run id under ``root``, or a path/URL ending in ``.zarr``) into ``(root, run_id)``;
    ``storage_options`` for a root made here (a :class:`StoreRoot` given carries its own)."""
    trimmed = os.fspath(run).rstrip("/")
    if trimmed.endswith(RUN_SUFFIX):
        parent, _, name = trimmed.rpartition("/")
        options = storage_options if storage_options is not None else getattr(root, "storage_options", None)
        if not parent and root is not None:  # a bare "RUN.zarr" with a root: under that root (found by a review:
            store_root = root if isinstance(root, StoreRoot) else StoreRoot(root, options)  # the root was ignored)
        else:
            store_root = StoreRoot(parent or ".", options)
        return store_root, validate_run_id(name[: -len(RUN_SUFFIX)])
    if "/" in trimmed or os.sep in trimmed:  # a path or URL, not of a run's folder (found by a review: "invalid
        if trimmed.startswith(("http://", "https://")) and "/zarr/" in trimmed:  # run id" for both)
            raise UserError(f"{trimmed!r} is a run served by `trajscope serve`: open it with "
                            f"xr.open_zarr({trimmed!r}); open_run takes a run id, or the path or URL of a run's "
                            "folder, RUN.zarr")
        raise UserError(f"{trimmed!r} is not a run: give a run id, or the path or URL of a run's folder, RUN.zarr")
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root, storage_options)
    return store_root, validate_run_id(trimmed)


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing other threads' files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
