"""Typed run configuration: pydantic models, YAML loading and ``--set a.b=c`` overrides.

Every field has a default, so ``RunConfig()`` is a valid (quickstart-like) run. Unknown fields and
invalid values are rejected with one line naming the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trajscope.store.errors import UserError


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_takes_bool(arg) for arg in get_args(annotation))


#: a data seed: ``None`` (the run's ``seed``) or what numpy's and torch's generators take (no negative seed)
DataSeed = Annotated[int | None, Field(None, ge=0, lt=2**63)]


class _Strict(BaseModel):
    # every float field must be finite: an infinite or NaN lr, scale or mu is refused before anything is created
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_yes_or_no_for_a_number(cls, raw: Any) -> Any:
        """``steps: true`` (or YAML's ``yes``/``on``) is not the number 1: pydantic would take it as one."""
        if isinstance(raw, dict):
            for name, value in raw.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
                    raise PydanticCustomError("yes_no_for_a_number",
                                              "{value} is a yes/no value, not what this field takes (a number or a name)",
                                              {"field": name, "value": str(value).lower()})
        return raw


class SyntheticData(_Strict):
    """Well-separated data ``z_i = y_i x_i = a e + sqrt(1 - a²) u_i`` hitting a target separation ``μ``.

    ``e`` is a fixed unit vector, ``u_i`` random unit vectors orthogonal to it; ``a`` is solved so that
    ``min_{i,j} cos(z_i, z_j) = μ`` exactly (up to float32 rounding); norms ``||x_i||`` are spread
    uniformly in ``[1 - norm_spread/2, 1 + norm_spread/2]``.
    """

    kind: Literal["synthetic"] = "synthetic"
    n: int = Field(100, ge=2)
    dim: int = Field(20, ge=2)
    mu: float = Field(0.1, gt=-1.0, lt=1.0)
    positive_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    norm_spread: float = Field(0.5, ge=0.0, lt=2.0)
    center: bool = False
    seed: DataSeed = None


class Toy2DData(_Strict):
    """Points in the plane: positives at angles in ``positive_degrees``, negatives in ``negative_degrees``."""

    kind: Literal["toy2d"] = "toy2d"
    n: int = Field(20, ge=2)
    positive_degrees: tuple[float, float] = (30.0, 90.0)
    negative_degrees: tuple[float, float] = (200.0, 250.0)
    norm_spread: float = Field(0.5, ge=0.0, lt=2.0)
    center: bool = False
    seed: DataSeed = None

    @model_validator(mode="after")
    def _ranges_low_to_high(self) -> "Toy2DData":
        for name in ("positive_degrees", "negative_degrees"):
            low, high = getattr(self, name)
            if low > high:  # (found by a review: numpy's "high - low < 0" traceback)
                raise ValueError(f"{name} is a range [low, high] in degrees, low first: write [{high:g}, {low:g}]")
        return self


class NpzData(_Strict):
    """User arrays from an ``.npz`` file with ``X`` (n, D) and ``y`` (n,) in {+1, -1}."""

    kind: Literal["npz"] = "npz"
    path: str = "data.npz"
    center: bool = False


class MnistData(_Strict):
    """Two MNIST digits (first = +1), pixels ``k/255`` in [0, 1], optional per-class subsample and centring.

    ``split``: ``train`` (default) is all 60 000 training images (0 vs 1: 12 665 samples), ``train50k``
    their first 50 000 (the 50k/10k train/validation split some published work used), ``test`` the
    10 000 test images.
    """

    kind: Literal["mnist"] = "mnist"
    digits: tuple[int, int] = (0, 1)
    per_class: int | None = Field(None, ge=1)
    path: str | None = None
    split: Literal["train", "train50k", "test"] = "train"
    center: bool = True
    seed: DataSeed = None


class TwoPointData(_Strict):
    """Two samples, ``x1`` (label +1) and ``x2`` (label -1), the paper's two-point separability study.

    ``z1 = y1 x1`` and ``z2 = y2 x2`` make the angle ``π/2 - angle`` (radians), so the separation is
    ``μ = cos(z1, z2) = sin(angle)``: ``angle = 0`` is the orthogonal (borderline, ``μ = 0``) case and a
    small ``angle`` a barely well-separated pair. The points lie in the first two coordinates of
    ``R^dim`` with norms ``norms``.
    """

    kind: Literal["two_point"] = "two_point"
    angle: float = Field(0.1, ge=-1.5707963267948966, le=1.5707963267948966)
    dim: int = Field(2, ge=2)
    norms: tuple[float, float] = (1.0, 1.0)
    center: bool = False

    @model_validator(mode="after")
    def _positive_norms(self) -> "TwoPointData":
        if min(self.norms) <= 0:
            raise ValueError(f"norms must be positive, got {list(self.norms)}")
        return self


DataConfig = Annotated[
    Union[SyntheticData, Toy2DData, NpzData, MnistData, TwoPointData], Field(discriminator="kind")
]


class ModelConfig(_Strict):
    """The two-layer bias-free ReLU network ``f(x) = Σ_j v_j max(<w_j, x>, 0)`` of width ``h``."""

    width: int = Field(50, ge=1)


class InitConfig(_Strict):
    """Small initialization: ``balanced`` (``W = ε W0``, ``v_j = s_j ||w_j||``) or ``gaussian`` (``N(0, α²)``)."""

    kind: Literal["balanced", "gaussian"] = "balanced"
    scale: float = Field(1e-4, gt=0.0)


class LossConfig(_Strict):
    """``L = R Σ_i ℓ(y_i f(x_i))`` with ``ℓ = exp(-z)`` or ``log(1 + exp(-z))``; ``R = 1`` (sum) or ``1/n`` (mean)."""

    kind: Literal["exp", "logistic"] = "exp"
    reduction: Literal["sum", "mean"] = "sum"


class TrainConfig(_Strict):
    """Gradient descent with step ``lr`` for ``steps`` steps (full batch unless ``batch_size``).

    ``threads``: CPU threads for the training math (default: one core fewer than the process may run
    on, its CPU affinity, so the writer thread keeps a core). ``flush_denormal``: flush float values below
    ~1e-38 to zero on the CPU (denormal weights of shrinking neurons make CPU matmuls much slower; the
    trajectory stays deterministic).
    """

    lr: float = Field(1e-3, gt=0.0)
    steps: int = Field(3000, ge=0)
    batch_size: int | None = Field(None, ge=1)
    train_v: bool = True
    stop_loss: float | None = None
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    threads: int | None = Field(None, ge=1)
    flush_denormal: bool = True

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        """``auto``, ``cpu[:N]`` or ``cuda[:N]`` (whether a CUDA device is there is checked when a run starts: a config
        for another machine is valid here). Found by a review: ``trajscope config`` passed ``tpu``, which
        ``produce`` refused."""
        if not re.fullmatch(r"auto|(cpu|cuda)(:(0|[1-9][0-9]{0,8}))?", device):  # (torch refuses cuda:01: a review)
            raise PydanticCustomError("unknown_device", "unknown device '{device}': use auto, cpu or cuda[:N]",
                                      {"device": device})
        return device


class RecordConfig(_Strict):
    """What to record: every step by default; ``every`` > 1 or a log-spaced ``schedule`` as options.

    ``durability``: ``process`` (default) — committed states survive a killed process; ``fsync`` — chunk
    files and their directories are fsynced before the commit that covers them and the attributes after
    it, so committed states also survive a power loss or kernel crash (local roots). ``commit_seconds``:
    written states are committed at most this often, so a live reader sees a written chunk within this
    time. ``flush_seconds``: a chunk not yet full is handed to the store as it is once its oldest state not yet
    handed over is this old (at the next recorded step; 0: full chunks only), so a slow run's states reach live
    readers, and survive a kill, within about ``flush_seconds + commit_seconds`` (``producer/recorder.py``).
    ``buffers``: chunks in flight between the training loop and the store (chunk buffers; on the
    CPU with the writer thread, the states of that many chunks kept by reference): the bound on memory,
    and the loop waits when all are full (default: enough to keep every write thread busy, plus the one
    being filled, at least 3; ``producer/recorder.py: default_buffers``). ``write_threads``:
    threads encoding and writing chunk files (default: one per core, at most 4, on a local root; 4 on an
    fsspec root).
    ``writer``: where the store's
    writing runs — ``thread`` (a thread of the training process), ``process`` (a long-lived writer
    process fed through shared memory, each chunk copied into it: the store's Python work stays off the
    training process's GIL; CPU or CUDA training on a local root only, else the thread is used), ``loop``
    (the thread, but on a GPU the training loop hands each chunk to the store itself once its copy to the
    host is done, as the CPU's loop always does, and the writer thread only commits: meant to spare the loop
    the writer thread's Python at each chunk; not measured on a GPU yet, BENCHMARKS.md "Record call"; on the
    CPU the same as ``thread``), or
    ``auto``, the default: the thread (on the CPU the thread, which keeps the states by reference, measured
    faster than the process, BENCHMARKS.md "Recording overhead"; on an H200 the thread recorded the reference
    config at 0.99× and 1.39× the bare loop's time in two runs against 1.82× and 1.79× for the process,
    BENCHMARKS.md "GPU table").
    ``io``: how chunk files are written on a local root — ``buffered`` (through the page cache), ``direct``
    (``O_DIRECT`` from page-aligned chunk buffers: the kernel copies nothing, the CPU recorder copies each state
    into those buffers instead of keeping it by reference; a filesystem that refuses it gets buffered writes),
    or ``auto``, the default: ``direct`` for uncompressed CPU training on ext2/3/4 or xfs, ``buffered`` for a
    GPU run, with zstd, on tmpfs, btrfs, f2fs, network filesystems and object stores
    (``producer/recorder.py: write_io``; BENCHMARKS.md, "Recording overhead" and "Recording ceiling").
    """

    every: int = Field(1, ge=1)
    schedule: Literal["linear", "log"] = "linear"
    log_points: int = Field(1000, ge=2)
    chunk_mib: float = Field(8.0, gt=0.0)
    compressor: Literal["none", "zstd"] = "none"
    buffers: int | None = Field(None, ge=2, le=64)  # (each holds a chunk: 8 MiB by default)
    durability: Literal["process", "fsync"] = "process"
    commit_seconds: float = Field(0.5, ge=0.0, le=60.0)
    flush_seconds: float = Field(2.0, ge=0.0, le=86400.0)
    write_threads: int | None = Field(None, ge=1, le=64)
    writer: Literal["auto", "thread", "loop", "process"] = "auto"
    io: Literal["auto", "buffered", "direct"] = "auto"


class RunConfig(_Strict):
    """A full run: data, model, initialization, loss, training and recording."""

    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**63)  # (numpy's and torch's generators take no negative seed)
    data: DataConfig = Field(default_factory=SyntheticData)
    model: ModelConfig = Field(default_factory=ModelConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_data_kind(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "kind" not in raw["data"]:
            raw = {**raw, "data": {"kind": "synthetic", **raw["data"]}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.train.batch_size is not None and getattr(self.data, "n", None) is not None:
            if self.train.batch_size > self.data.n:
                raise ValueError(f"train.batch_size {self.train.batch_size} exceeds data.n {self.data.n}")
        return self


_DATA_KINDS = {"synthetic", "toy2d", "npz", "mnist", "two_point"}


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in _DATA_KINDS))
    kind = next((p for p in first["loc"] if isinstance(p, str) and p in _DATA_KINDS), None)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "yes_no_for_a_number":
        where = f"{where}.{first['ctx']['field']}" if where else first["ctx"]["field"]
    if first["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; `trajscope config` prints every field)"
        if kind is not None:  # e.g. --set data.kind=toy2d on a config of synthetic data (found by a review)
            message = (f"not a field of data.kind {kind} (misspelt, or a field of another kind: changing "
                       f"data.kind, leave out the old kind's fields; `trajscope config` prints every field)")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"invalid config {source}: {where or 'config'}: {message}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` → ``(["a", "b"], value)`` with the value parsed as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise UserError(f"bad --set {item!r}: use --set section.field=value, e.g. --set train.lr=0.01")
    key, _, raw = item.partition("=")
    path = key.strip().split(".")
    if not key.strip():
        raise UserError(f"bad --set {item!r}: the field name is empty")
    if not all(path):  # (train..lr was taken as train.lr: found by a review)
        raise UserError(f"bad --set {item!r}: an empty part in the field name {key.strip()!r}: use "
                        "section.field=value, e.g. --set train.lr=0.01")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except DuplicateKey as err:  # (a mapping value with a key twice was taken as a string, refused as one)
        raise UserError(f"bad --set {item!r}: in its value, {err.problem}") from None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``--set`` items to a raw config dict (before validation)."""
    for item in overrides or []:
        path, value = parse_override(item)
        set_dotted(raw, path, value, label=f"bad --set {item!r}")
    return raw


def set_dotted(raw: dict[str, Any], path: list[str], value: Any, *, label: str) -> None:
    """``raw[a][b] = value`` for ``path = ["a", "b"]``, creating sections; a value in the way is an error."""
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{label}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (found by a review: ``train: {lr: 0.1, lr:
    0.2}`` ran with the last value, silently). A key a merge (``<<: *anchor``) brings in is no second one: each
    mapping's own keys are checked once, before PyYAML merges into it (which it does in place, a merge source
    perhaps before its own turn: found by a review)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # (a merge; a key that is a list or mapping: the base constructor refuses it)
                key = self.construct_object(key_node)  # (the value: `1` and `1.0`, `null` and `~` are one key;
                if key in seen:                       # found by a review)
                    raise DuplicateKey(None, None, f"the key {key_node.value!r} is given twice", key_node.start_mark)
                seen.add(key)
        super().flatten_mapping(node)


def load_yaml(text: str) -> Any:
    """``text`` as YAML (the safe loader; a key given twice in one mapping is a :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml_mapping(path: Path, what: str, *, example: str, shape: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; one-line :class:`UserError` otherwise (empty file: ``{}``; a key
    given twice in a mapping is an error)."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: pass a YAML file, e.g. {example}")
    if not path.is_file():
        raise UserError(f"{what} {path} not found: pass a YAML file, e.g. {example}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file (not UTF-8): pass a YAML file, e.g. {example}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{what} {path} must hold {shape}")
    return raw


def load_config(
    source: str | os.PathLike | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Load a config from a YAML file, a dict or a :class:`RunConfig`, then apply ``--set`` overrides."""
    label = "(defaults)"
    if isinstance(source, RunConfig):
        raw = source.model_dump(mode="json")
        label = "(object)"
    elif isinstance(source, dict):
        raw = dict(source)
        label = "(dict)"
    elif source is None:
        raw = {}
    else:
        path = Path(source)
        label = str(path)
        raw = read_yaml_mapping(path, "config file", example="configs/quickstart.yaml",
                                shape="a mapping of sections (data, model, train...)")
    raw = apply_overrides(raw, overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_one_line(err, label)) from None
