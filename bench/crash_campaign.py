"""Crash campaign: random SIGKILLs over ``trajscope produce`` and ``trajscope resume`` of one run.

A producer (or, once the run exists, a resume) is started as a process (``trajscope produce`` /
``trajscope resume``, forked from a forkserver that has imported torch already) and killed by SIGKILL at
a random instant after it took the writer lock, ``--kills`` times. After every kill the run is checked against an uninterrupted reference run
of the same config: it must open (or, killed while being created, be invisible or marked ``creating``),
every committed state must still be there (committed never goes down), decode (crc32c) and equal the
reference bit for bit. A run that completes is compared whole, then removed and started again.

``--io direct`` records larger states (``D = 784``: 75 kB of ``W``) in chunks of 0.5 MiB with
``record.io: direct``, so every full ``W`` chunk is written with ``O_DIRECT`` and the kills land in direct
writes too (the campaign's runs live under ``$TMPDIR``: on ext2/3/4 or xfs a direct write goes from the
buffer to the device; a filesystem that refuses ``O_DIRECT`` gets buffered writes). The default config's
chunks (20 kB) are all written through the page cache.

``--writer process`` (``record.writer``) puts the store's writing in a writer process beside each producer
and resume, which a kill of the trainer must stop before it writes or commits anything more.

A produce is killed within 1.1 × the reference run's time (from the lock to the end); a resume within 1.1 ×
(its start-up + its remaining share of that time, at least 0.05). The start-up (opening the run, the
dataset, a writer process) is measured once, before the kills, on a run killed half-way and resumed: the
time from the resume's lock to its first new commit. Without it the kills crowded into the start-ups of the
last resumes of each run. ``--steps`` (default 2000) sets the run's length.

    python bench/crash_campaign.py [--kills 50] [--seed 0] [--io direct] [--writer process] [--steps 2000]
                                   [--write BENCHMARKS.md]

All counts but ``kills`` and ``completed runs`` should be zero. ``--write`` replaces the whole "Crash
campaign" section of the file it is given (earlier campaigns' paragraphs included).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIG = {
    "name": "crash", "seed": 5,
    "data": {"kind": "synthetic", "n": 60, "dim": 12, "mu": 0.1},
    "model": {"width": 24},
    "init": {"kind": "gaussian", "scale": 0.01},
    "train": {"lr": 0.002, "steps": 2000, "batch_size": 20, "threads": 1},
    "record": {"chunk_mib": 0.02},
}
VARIABLES = ("W", "v", "loss", "output", "step", "t")
#: ``--io direct``: what changes in :data:`CONFIG`
DIRECT_CONFIG = {"data": {"dim": 784}, "record": {"chunk_mib": 0.5, "io": "direct"}}


def campaign_config(io: str, writer: str = "auto", steps: int | None = None) -> dict:
    """The campaign's run config for ``--io``, ``--writer`` and ``--steps``."""
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in CONFIG.items()}
    if steps is not None:
        config["train"]["steps"] = steps
    if io == "direct":
        for key, value in DIRECT_CONFIG.items():
            config[key] = {**config.get(key, {}), **value}
    if writer != "auto":
        config["record"] = {**config["record"], "writer": writer}
    return config


def direct_chunks(config: dict) -> tuple[int, int]:
    """How many of a run's ``W`` chunk files are written with direct I/O, and how many it has: the full
    chunks, when large enough (a last, partial chunk is padded into a new array and written buffered)."""
    from trajscope.store.chunkio import DIRECT_ALIGNMENT, DIRECT_MIN_BYTES
    from trajscope.store.layout import chunk_steps_for

    w_bytes, states = config["model"]["width"] * config["data"]["dim"] * 4, config["train"]["steps"] + 1
    span = chunk_steps_for(w_bytes, int(config["record"]["chunk_mib"] * 2**20))  # (W, float32, the largest)
    full, chunks = states // span, -(-states // span)
    large = span * w_bytes // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT >= DIRECT_MIN_BYTES
    return (full if large and config["record"].get("io") == "direct" else 0), chunks


class Child:
    """``trajscope ARGS`` in a process forked from a forkserver that has imported torch and trajscope
    already, so a cycle costs the command, not the interpreter's start-up. Same code path as the CLI."""

    def __init__(self, ctx, args: list[str], root: Path, log: Path):
        self.log = log
        self.process = ctx.Process(target=_run_cli, args=([*args, "--root", str(root), "--quiet"], str(log)))
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode

    def kill(self) -> bool:
        """SIGKILL it; False when it had exited meanwhile (the forkserver reaps it, so its pid is gone)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            self.process.join()
            return False
        self.process.join()
        return True

    def stderr(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def _run_cli(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from trajscope.cli import main as cli_main

    sys.argv = ["trajscope", *argv]
    cli_main()


def wait_for_lock(proc: Child, root: Path, timeout: float = 600.0) -> bool:
    """Wait until ``proc`` holds the run's writer lock (its pid is written in the lock file) or exits."""
    lock = root / ".locks" / f"{'ref' if root.name == 'ref' else 'r'}.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if lock.read_text().startswith(f"pid {proc.pid} "):
                return True
        except OSError:
            pass
        time.sleep(0.005)
    return False


def resume_startup(ctx, config: Path, work: Path, lifetime: float, log: Path) -> float | None:
    """Seconds from a resume taking the lock to its first new commit, measured once: a run of ``config``
    killed half-way, then resumed. ``None`` if that could not be measured (the kill came too late)."""
    from trajscope.store import StoreRoot

    root = work / "calibration"
    store = StoreRoot(root)
    proc = Child(ctx, ["produce", str(config), "--name", "r"], root, log)
    wait_for_lock(proc, root)
    time.sleep(lifetime / 2)
    if not proc.kill():
        shutil.rmtree(root, ignore_errors=True)
        return None
    before = store.read_attrs("r").get("committed_steps", 0)
    proc = Child(ctx, ["resume", "r"], root, log)
    wait_for_lock(proc, root)
    started = time.perf_counter()
    seconds = None
    while proc.poll() is None:
        try:
            if store.read_attrs("r").get("committed_steps", 0) > before:
                seconds = time.perf_counter() - started
                break
        except Exception:  # noqa: BLE001 - the attributes are replaced atomically; read again
            pass
        time.sleep(0.005)
    proc.wait()
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def check(root: Path, ref, counts: dict, last_committed: int) -> tuple[str | None, int]:
    """Check the run after a kill; returns its status (None: not visible) and committed steps."""
    from trajscope import open_run
    from trajscope.store import StoreRoot, UserError
    from trajscope.store.errors import RunNotReady
    from trajscope.store.chunkio import stale_temporaries

    store = StoreRoot(root)
    if not store.exists("r"):
        return None, 0
    counts["temporary files a kill left (resume removes them)"] += len(stale_temporaries(store.run_url("r")))
    try:
        ds = open_run("r", root)
    except UserError as err:
        if isinstance(err, RunNotReady):
            counts["killed while creating (refused, replaceable)"] += 1
            return "creating", 0
        counts["unopenable runs"] += 1
        return "unopenable", 0
    except Exception:  # noqa: BLE001
        counts["unopenable runs"] += 1
        return "unopenable", 0
    committed = int(ds.attrs["committed_steps"])
    counts["lost committed steps"] += max(0, last_committed - committed)
    try:
        loaded = ds.load()
    except Exception:  # noqa: BLE001 - a checksum or decode error
        counts["torn chunks (runs failing to decode)"] += 1
        return ds.attrs["status"], committed
    if any(not np.array_equal(loaded[v].values, ref[v].values[:committed]) for v in VARIABLES):
        counts["non-identical committed prefixes"] += 1
    return ds.attrs["status"], committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--io", default="auto", choices=["auto", "direct"],
                        help="direct: larger states in 0.5 MiB chunks written with O_DIRECT "
                             "(default: the 20 kB chunks, buffered)")
    parser.add_argument("--writer", default="auto", choices=["auto", "thread", "process"],
                        help="record.writer of the runs (auto: the writer thread here)")
    parser.add_argument("--steps", type=int, default=CONFIG["train"]["steps"],
                        help="steps of the run (longer: more of each resume is writing, less is its start-up)")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    run_config = campaign_config(args.io, args.writer, args.steps)
    direct, chunks = direct_chunks(run_config)
    print(f"W chunk files a run: {chunks}, eligible for direct I/O: {direct}", file=sys.stderr)
    from trajscope import open_run
    from trajscope.store import StoreRoot
    from trajscope.store.chunkio import stale_temporaries
    from trajscope.store.fsck import fsck_run

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crash-campaign-"))
    config = work / "crash.yaml"
    config.write_text(yaml.safe_dump(run_config))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "trajscope.cli", "trajscope.producer", "trajscope.store"])
    log = work / "stderr.txt"
    proc = Child(ctx, ["produce", str(config), "--name", "ref"], work / "ref", log)
    wait_for_lock(proc, work / "ref")
    started = time.perf_counter()
    assert proc.wait() == 0, proc.stderr()
    lifetime = time.perf_counter() - started  # from taking the lock (create) to the end of finish
    ref = open_run("ref", work / "ref").load()
    # a resume's start-up (opening the run, the dataset, a writer process) before it writes: each resume's
    # kill window is that plus its share of the run, so the kills do not crowd into the start-up
    startup = resume_startup(ctx, config, work, lifetime, log)
    startup = 0.3 * lifetime if startup is None else startup
    print(f"run: {lifetime:.2f} s from the lock to the end; a resume's start-up: {startup:.2f} s", file=sys.stderr)
    root = work / "runs"
    counts = dict.fromkeys([
        "kills", "kills during produce", "kills during resume", "killed while creating (refused, replaceable)",
        "lost committed steps", "torn chunks (runs failing to decode)", "unopenable runs",
        "non-identical committed prefixes", "completed runs", "non-identical completed runs",
        "temporary files a kill left (resume removes them)", "temporary files left in completed runs"], 0)
    last_committed, status = 0, None

    def completed() -> None:
        nonlocal last_committed, status
        # a resume removes what a kill left in mid-write: a completed run holds no temporary file
        counts["temporary files left in completed runs"] += len(stale_temporaries(StoreRoot(root).run_url("r")))
        report = fsck_run(StoreRoot(root), "r", repair=True)  # finishes a finish killed after its status write
        final = open_run("r", root).load()
        counts["completed runs"] += 1
        if not report.ok or final.sizes != ref.sizes or any(
                not np.array_equal(final[v].values, ref[v].values) for v in VARIABLES):
            counts["non-identical completed runs"] += 1
        shutil.rmtree(root)
        last_committed, status = 0, None

    while counts["kills"] < args.kills:
        phase = "produce" if status in (None, "creating") else "resume"
        cmd = ["produce", str(config), "--name", "r"] if phase == "produce" else ["resume", "r"]
        proc = Child(ctx, cmd, root, log)
        # a kill lands after the lock is taken (the imports are of no interest), up to a little past the
        # expected end of this phase: create, write, commit, finish and resume are all hit
        wait_for_lock(proc, root)
        if phase == "produce":
            window = lifetime
        else:
            window = startup + max(1.0 - last_committed / ref.sizes["step"], 0.05) * lifetime
        time.sleep(rng.uniform(0.0, 1.1 * window))
        if proc.poll() is None and proc.kill():
            counts["kills"] += 1
            counts[f"kills during {phase}"] += 1
        else:
            if proc.poll() != 0:
                raise SystemExit(f"{phase} exited {proc.poll()}: {proc.stderr()}")
        status, committed = check(root, ref, counts, last_committed)
        last_committed = max(committed, last_committed) if status not in (None, "creating") else 0
        if status == "complete":
            completed()
        print(f"\r{counts['kills']}/{args.kills} kills, {counts['completed runs']} completed runs   ", end="",
              file=sys.stderr, flush=True)
    while status not in (None, "creating", "complete"):  # finish the last run and compare it too
        assert Child(ctx, ["resume", "r"], root, log).wait() == 0
        status, committed = check(root, ref, counts, last_committed)
    if status == "complete":
        completed()
    print(file=sys.stderr)
    rows = [f"| {name} | {value} |" for name, value in counts.items()]
    table = "\n".join(["| count | value |", "|---|---:|", *rows])
    print(table)
    shutil.rmtree(work, ignore_errors=True)
    if args.write:
        import record_overhead as ro

        io = ("" if args.io == "auto" else f" --io {args.io}") + ("" if args.writer == "auto" else f" --writer {args.writer}")
        io += "" if args.steps == CONFIG["train"]["steps"] else f" --steps {args.steps}"
        section = (f"## Crash campaign\n\n`python bench/crash_campaign.py --kills {args.kills} --seed {args.seed}{io}` — "
                   f"random SIGKILLs over `trajscope produce` and `trajscope resume` of a {run_config['train']['steps']}-step "
                   f"run ({lifetime:.1f} s uninterrupted from taking the writer lock to the end; each kill drawn uniformly "
                   f"from the moment the process takes the lock to 1.1 × that time for a produce, and for a resume 1.1 × "
                   f"its start-up ({startup:.2f} s, measured once) plus its remaining share of that time, at least 0.05), "
                   f"each kill followed by the checks of "
                   f"the script's docstring; measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs shared with "
                   f"other work.\n\n{table}\n")
        ro.replace_section(args.write, "## Crash campaign", section)


if __name__ == "__main__":
    main()
