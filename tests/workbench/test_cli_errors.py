"""Every user error of the CLI is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from trajscope import __version__

from .conftest import cli


def one_line_error(proc, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trajscope: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_version_prints_the_package_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"trajscope {__version__}" and not proc.stderr


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flags_list_the_commands(flag):
    proc = cli(flag)
    assert proc.returncode == 0 and not proc.stderr
    for command in ("produce", "show", "plot", "export", "ls", "rm", "tag", "compare", "serve"):
        assert f"  {command} " in proc.stdout


def test_bare_command_prints_the_help_and_exits_2():
    proc = cli()
    assert proc.returncode == 2 and "Usage: trajscope" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["lss"], ["No such command 'lss'", "Did you mean 'ls'", "trajscope --help"]),
    (["produce"], ["Missing argument", "config", "trajscope produce --help"]),
    (["ls", "--colums", "x"], ["No such option", "--colums"]),
    (["serve", "--port", "http"], ["Invalid value for '--port'", "valid integer"]),
    # (found by a review: an option missing its value pointed at `trajscope --help`)
    (["show", "r", "--step"], ["Option '--step' requires an argument", "`trajscope show --help`"]),
])
def test_usage_errors_are_one_line(args, words):
    one_line_error(cli(*args), *words)


def test_a_reversed_step_range_is_one_line(tiny_root):
    one_line_error(cli("show", "a", "--root", str(tiny_root), "--step", "100:50"), "100:50", "50:100")


def test_a_step_range_without_states_names_the_run_s_steps(tiny_root):
    one_line_error(cli("show", "a", "--root", str(tiny_root), "--step", "100:200"), "100:200", "0 to 40")


def test_an_s3_root_without_s3fs_is_one_line():
    proc = cli("ls", "--root", "s3://bucket/runs", prelude="import sys; sys.modules['s3fs'] = None; ")
    one_line_error(proc, "s3fs", "pip install 'trajscope[s3]'")


def _without_credentials(tmp_path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens on 9
    return env


@pytest.mark.parametrize("command", [["ls"], ["produce", "configs/quickstart.yaml", "--quiet"]])
def test_an_s3_root_without_credentials_is_one_line(command, tmp_path):
    """Found by a review: botocore's NoCredentialsError came out as a 60-line traceback (it is raised when the
    request is signed, before any connection)."""
    from pathlib import Path

    env = _without_credentials(tmp_path)
    command = [str(Path(__file__).resolve().parents[2] / c) if c.endswith(".yaml") else c for c in command]
    proc = cli(*command, "--root", "s3://bucket/runs", env=env, timeout=120)
    one_line_error(proc, "NoCredentialsError", "AWS_ACCESS_KEY_ID")


def test_a_server_whose_object_store_refuses_answers_502_saying_why(tmp_path):
    import subprocess
    import sys

    from .conftest import first_answer, free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "trajscope", "serve", "--root", "s3://bucket/runs", "--port",
                               str(port)], env=_without_credentials(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        r = first_answer(f"http://127.0.0.1:{port}/api/runs", server, timeout=60)
        assert r.status_code == 502 and "NoCredentialsError" in r.json()["detail"], r.text
        assert "AWS_ACCESS_KEY_ID" in r.json()["detail"]
    finally:
        server.terminate()
        server.wait(30)


def test_a_malformed_endpoint_is_one_line_naming_it(tmp_path):
    """Found by a review of the images: ``AWS_ENDPOINT_URL=s3:5000`` (no scheme) raised a builtin ValueError inside
    aiobotocore, which came out as an 89-line traceback from ``produce`` and ``ls``, and a 500 from the API."""
    env = {**_without_credentials(tmp_path), "AWS_ENDPOINT_URL": "s3:5000", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    one_line_error(cli("ls", "--root", "s3://bucket/runs", env=env, timeout=120), "Invalid endpoint: s3:5000",
                   "AWS_ENDPOINT_URL")


def test_a_root_the_server_may_not_read_is_a_503_naming_its_user(tmp_path, monkeypatch):
    """Found by a review of the images: a root the image's user (uid 10001) may not read made ``/api/runs`` a 500
    "internal error … please report it". (Simulated: the tests run as root, whom permissions do not stop.)"""
    import errno
    import os

    import httpx

    from trajscope.api.app import create_app
    from trajscope.store import StoreRoot

    from tests.api.conftest import LiveServer

    def refused(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(StoreRoot, "run_ids", refused)
    server = LiveServer(create_app(StoreRoot(tmp_path))).start()
    try:
        r = httpx.get(f"{server.url}/api/runs", timeout=30)
    finally:
        server.stop()
    assert r.status_code == 503, r.text
    assert f"uid {os.getuid()}" in r.json()["detail"] and "read access" in r.json()["detail"]
    assert str(tmp_path) not in r.text  # never the root's absolute path


@pytest.mark.parametrize("when, signame", [("data", "SIGTERM"), ("run made", "SIGTERM"), ("run made", "SIGHUP"),
                                           ("training", "SIGHUP"), ("data", "SIGINT")])
def test_sigterm_while_a_run_is_set_up_ends_the_command_and_leaves_no_run_running(tmp_path, small_config, when,
                                                                                  signame):
    """Found by a review of the images: SIGTERM had no handler until training began, so a ``podman stop`` in the
    first seconds (``trajscope`` is PID 1 there, which ignores unhandled signals) waited for the SIGKILL, which
    left the run ``running``. Here the signal arrives while the data are built, once the run exists, or during
    training. SIGHUP (a closed terminal or ssh session; found by another review: it killed the producer and left
    the run ``running``) is taken the same way. SIGINT is sent to a command that inherited it ignored (started
    with ``&`` by a script; found by a review: dropped before training, honoured during it)."""
    from trajscope.store import StoreRoot, open_run

    target = {"data": "trajscope.producer.data.build_dataset", "run made": "trajscope.producer.two_layer.init",
              "training": "trajscope.producer.train.gradient_step"}[when]
    module, name = target.rsplit(".", 1)
    once = "    g.sent = getattr(g, 'sent', 0) + 1\n    if g.sent == 3: " if when == "training" else "    "
    prelude = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if signame == "SIGINT" else "")
    prelude += (f"import importlib, os, signal; m = importlib.import_module({module!r}); f = m.{name}\n"
               f"def g(*a, **k):\n{once}os.kill(os.getpid(), signal.{signame})\n    return f(*a, **k)\n"
               f"m.{name} = g\nimport trajscope.producer.train as t; t.{name} = g\n")
    import yaml

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    proc = cli("produce", str(config), "--root", str(tmp_path), "--name", "r", "-q", prelude=prelude)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    if when == "data":
        assert not StoreRoot(tmp_path).exists("r")  # stopped before any run was made
    else:
        assert open_run("r", root=tmp_path).attrs["status"] == "interrupted"  # `resume` takes it up
    if when != "training":  # (training reports the run it ended `interrupted` itself)
        assert proc.stderr.strip().splitlines()[-1].startswith("trajscope: interrupted before training began")


@pytest.mark.parametrize("point, words", [
    ("create.arrays", "interrupted while run 'r' was being created: nothing was trained, and the run may be left "
                      "half-made (`creating` in `trajscope ls`); `trajscope produce CONFIG --name r --root ROOT` makes "
                      "it anew"),
    # (found by a review: a Ctrl-C once the run's creation had ended was told half-made, and produce refused it)
    ("create.attrs", "interrupted as run 'r' was created: nothing was trained; `trajscope resume r --root ROOT` "
                     "trains it"),
    ("finish.status", "interrupted while the end of run 'r' was stored (41 states committed): it may be left "
                      "part-ended; `trajscope fsck r --root ROOT` says what is left and `--repair` ends it"),
])
def test_a_ctrl_c_while_the_run_is_created_or_ended_says_what_it_left(tmp_path, small_config, point, words):
    """Found by a review: a Ctrl-C while the run was being created (left `creating`, which `resume` refuses), or a
    second one while it was ended, printed "interrupted before training began: nothing was trained ... `trajscope
    resume RUN` continues it", with two "coroutine ... was never awaited" warnings after it."""
    prelude = ("import os, signal, trajscope.store.faults as faults; f = faults.checkpoint\n"
               f"def g(name, detail=''):\n    if name == {point!r}: os.kill(os.getpid(), signal.SIGINT)\n"
               "    return f(name, detail)\nfaults.checkpoint = g\n")
    import yaml

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    proc = cli("produce", str(config), "--root", str(tmp_path), "--name", "r", "-q", prelude=prelude)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1] == f"trajscope: {words.replace('ROOT', str(tmp_path))}", proc.stderr
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr, proc.stderr
    from trajscope.store import StoreRoot, open_run

    if point == "create.arrays":
        assert StoreRoot(tmp_path).read_attrs("r")["status"] == "creating"
        again = cli("produce", str(config), "--root", str(tmp_path), "--name", "r", "-q")  # as the line says
    elif point == "create.attrs":
        assert StoreRoot(tmp_path).read_attrs("r")["status"] == "running"
        again = cli("resume", "r", "--root", str(tmp_path), "-q")
    else:  # as the line says: fsck --repair ends it, over every state
        again = cli("fsck", "r", "--root", str(tmp_path), "--repair")
    assert again.returncode == 0, again.stderr[-2000:]
    ds = open_run("r", root=tmp_path)
    assert ds.attrs["status"] in ("complete", "interrupted") and ds.sizes["step"] == 41, ds.attrs


def test_a_ctrl_c_while_produce_reports_says_how_the_run_ended(tmp_path, small_config):
    """Found by a review: a second Ctrl-C just after the run ended, while its report was printed, ended the command
    with exit 130 and nothing printed."""
    import yaml

    prelude = ("import os, signal, trajscope.cli.produce as p; f = p._report\n"
               "def g(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n    return f(*a, **k)\np._report = g\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    proc = cli("produce", str(config), "--root", str(tmp_path), "--name", "r", "-q", prelude=prelude)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1] == (f"trajscope: interrupted while reporting: run r ended `complete` "
                                                    f"with 41 states; `trajscope show r --root {tmp_path}` says the "
                                                    "rest"), proc.stderr


def test_a_ctrl_c_in_a_reading_command_is_one_line(tmp_path, small_config):
    """Found by a review: a Ctrl-C during `show` or `export` (click's Abort) ended the command with exit 130 and nothing
    printed."""
    from trajscope.producer import produce

    produce(small_config(), root=tmp_path, name="r")
    prelude = ("import os, signal\nfrom trajscope.store import StoreRoot\nf = StoreRoot.read_attrs\n"
               "def g(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n    return f(*a, **k)\n"
               "StoreRoot.read_attrs = g\n")
    proc = cli("show", "r", "--root", str(tmp_path), prelude=prelude)
    assert proc.returncode == 130 and proc.stderr.strip().splitlines()[-1] == "trajscope: interrupted", proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_hangup_ignored_by_nohup_leaves_the_run_going(tmp_path, small_config):
    """Under ``nohup`` (SIGHUP ignored when the command starts) a hangup during training changes nothing: the run
    completes."""
    import yaml

    from trajscope.store import open_run

    prelude = ("import os, signal; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
               "import trajscope.producer.train as t; f = t.gradient_step\n"
               "def g(*a, **k):\n    g.sent = getattr(g, 'sent', 0) + 1\n"
               "    if g.sent == 3: os.kill(os.getpid(), signal.SIGHUP)\n    return f(*a, **k)\n"
               "t.gradient_step = g\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    proc = cli("produce", str(config), "--root", str(tmp_path), "--name", "r", "-q", prelude=prelude)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert open_run("r", root=tmp_path).attrs["status"] == "complete"


def test_step_help_is_not_turned_into_an_emoji():
    proc = cli("show", "--help", env=None)
    assert proc.returncode == 0 and "a:b:s" in proc.stdout and "\N{NEGATIVE SQUARED LATIN CAPITAL LETTER B}" not in proc.stdout


def test_a_run_whose_writes_fail_is_one_line_and_exit_1(tmp_path, small_config):
    """A run that fails (here its second chunk of ``W`` cannot be written, as on a full disk) ends the CLI with
    one line naming the run, the cause and what is committed, exit code 1 (not a usage error, not a
    traceback); the run is ``failed`` and ``resume`` completes it once the cause is gone."""
    import os

    import yaml

    from trajscope import open_run
    from trajscope.store import StoreRoot

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(train={"steps": 60})))
    root = tmp_path / "runs"
    env = {**os.environ, "TRAJSCOPE_FAULT": "write.renaming:raise:1:W/c/1/"}
    proc = cli("produce", str(config), "--root", str(root), "--name", "r", "-q", env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trajscope: error: run 'r' failed: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    committed = open_run("r", root=root).attrs["committed_steps"]
    assert "injected fault at write.renaming" in lines[0] and f"({committed} states committed" in lines[0]
    assert f"trajscope resume {StoreRoot(root).run_url('r')}" in lines[0]  # (the root is not the default one)
    assert open_run("r", root=root).attrs["status"] == "failed"
    resumed = cli("resume", "r", "--root", str(root), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert open_run("r", root=root).attrs["status"] == "complete"


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-1", "0"])
def test_a_response_cap_that_is_no_size_is_one_line(tmp_path, value):
    """Found by a review: nan/inf were a traceback, -1 was taken (every slice then a 413)."""
    one_line_error(cli("serve", "--root", str(tmp_path), "--max-response-mib", value), "--max-response-mib",
                   "a size in MiB")


def test_a_port_in_use_is_one_line_before_the_server_announces_itself(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("serve", "--root", str(tmp_path), "--port", str(port), timeout=60)
    one_line_error(proc, f"127.0.0.1:{port}", "in use", "--port")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_serve_refuses_a_root_that_is_no_folder_before_it_listens(tmp_path, kind):
    """Found by a review: ``serve --root`` with a typo started, and the dashboard said "no runs under this root
    yet" (``/health`` ok), so the typo stayed invisible."""
    root = tmp_path / "runz"
    if kind == "file":
        root.write_text("x")
    words = [f"--root {root} does not exist", "mkdir"] if kind == "missing" else [f"{root} is a file, not a folder"]
    one_line_error(cli("serve", "--root", str(root), "--port", "1", timeout=60), *words)
    assert root.exists() == (kind == "file")  # (nothing made)


def test_a_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(cli("ls", "--root", str(tmp_path / "f")), "is a file, not a folder")


def test_a_root_inside_a_run_is_refused_and_the_outer_run_keeps_its_neighbours(tmp_path, tiny_root):
    """Found by a review: ``--root RUN.zarr`` (or a folder under it) was accepted, so runs recorded there lay inside
    the outer run, and ``rm`` of the outer run deleted them unmentioned."""
    from pathlib import Path

    config = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
    run_id = sorted(p.name for p in tiny_root.iterdir() if p.name.endswith(".zarr"))[0]
    inside = tiny_root / run_id
    before = sorted(str(p.relative_to(inside)) for p in inside.rglob("*"))
    for root in (inside, inside / "W", inside / "new" / "deeper"):
        for words in (("ls",), ("produce", config, "--set", "train.steps=2", "--name", "nested")):
            one_line_error(cli(*words, "--root", str(root)), f"lies inside the Zarr store {inside}",
                           f"the folder that holds it, {tiny_root}")
    assert sorted(str(p.relative_to(inside)) for p in inside.rglob("*")) == before  # nothing made in it
    from trajscope.store import StoreRoot

    assert StoreRoot(tiny_root).location == str(tiny_root.resolve())  # the root holding it stays a root
    # a command's hints name the default root without making it (found by a review: `ls --root GOOD` run from
    # inside a run's folder failed, its resume hint having made the default root ./runs there)
    listed = cli("ls", "--root", str(tiny_root), prelude=f"import os; os.chdir({str(inside / 'W')!r}); ")
    assert listed.returncode == 0 and run_id.removesuffix(".zarr") in listed.stdout, listed.stderr
    stray = tmp_path / "home"  # a zarr.json that is no Zarr document makes no store (a review)
    (stray / "runs").mkdir(parents=True)
    (stray / "zarr.json").write_text("notes, not Zarr")
    assert StoreRoot(stray / "runs").location == str((stray / "runs").resolve())


def test_ls_of_a_missing_root_says_so(tmp_path):
    proc = cli("ls", "--root", str(tmp_path / "nowhere"))
    assert proc.returncode == 0 and "no store root at" in proc.stdout and not proc.stderr


def test_compare_checks_its_step_before_printing_anything(tiny_root):
    proc = cli("compare", "a", "b", "--root", str(tiny_root), "--step", "abc")
    one_line_error(proc, "--step 'abc'")
    assert not proc.stdout


def test_rm_without_an_answer_deletes_nothing_and_says_how(tiny_root):
    proc = cli("rm", "a", "--root", str(tiny_root), input="")
    assert proc.returncode == 1 and "nothing deleted: no answer" in proc.stderr and "--yes" in proc.stderr
    assert (tiny_root / "a.zarr" / "zarr.json").exists()


def test_resume_of_a_missing_run_leaves_no_lock_file(tmp_path):
    one_line_error(cli("resume", "nope", "--root", str(tmp_path)), "no run 'nope'")
    assert not (tmp_path / ".locks" / "nope.lock").exists()


def test_export_prints_no_library_warning(tiny_root, tmp_path):
    proc = cli("export", "a", "--root", str(tiny_root), "-o", str(tmp_path / "a.zarr"))
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["produce", "{bin}", "--root", "{tmp}/r"], ["not a text file"]),
    (["produce", "{cfg}", "--root", "foo://bar"], ["Protocol not known: foo"]),
    (["produce", "{cfg}", "--root", ""], ["the store root is empty"]),
    # found by a review: `s3://` was a traceback (a local folder "s3:" was used), `s3:/b/r` recorded into ./s3:/b/r
    (["produce", "{cfg}", "--root", "s3://"], ["names no bucket or path", "s3://BUCKET/prefix"]),
    (["ls", "--root", "s3:/tsb/runs"], ["looks like a URL with one slash: write s3://tsb/runs"]),
    (["produce", "{cfg}", "--root", "memory://tsb//dbl/runs"], ["has an empty path component", "memory://tsb/dbl/runs"]),
    (["produce", "{cfg}", "--root", "{tmp}/r", "--set", "seed=-1"], ["seed", "greater than or equal to 0"]),
    (["produce", "{cfg}", "--root", "{tmp}/r", "--set", "record.buffers=100000"], ["record.buffers", "64"]),
    (["produce", "{npy_cfg}", "--root", "{tmp}/r"], ["is not an .npz archive", "numpy.savez"]),
    (["produce", "{txt_cfg}", "--root", "{tmp}/r"], ["is not an .npz archive", "numpy.savez"]),  # (a text file:
    # numpy took it for a pickle and spoke of allow_pickle)
    (["sweep", "{seed_grid}", "--root", "{tmp}/r"], ["seeds: [0, 1, 2]"]),
    (["plot", "a", "loss", "--root", "{tiny}", "-o", "{tmp}/afile/p.png"], ["Not a directory"]),
    (["export", "a", "--root", "{tiny}", "-o", "{tmp}/afile/x.nc"], ["not a folder"]),
    (["reproduce", "--quick", "--root", "{tmp}/r", "--out", "{tmp}/afile"], ["--out", "cannot make the report folder"]),
])
def test_more_mistakes_are_one_line_and_create_nothing(tmp_path, tiny_root, small_config, args, words):
    """Found by a review: each of these was a traceback (or, for a grid over the seed, silently one run)."""
    import numpy as np
    import yaml

    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(small_config()))
    np.save(tmp_path / "data.npy", np.ones((4, 3)))
    npy = small_config()
    npy["data"] = {"kind": "npz", "path": str(tmp_path / "data.npy")}  # (an .npy file where an .npz belongs)
    (tmp_path / "npy.yaml").write_text(yaml.safe_dump(npy))
    (tmp_path / "data.txt").write_text("1 2 3\n")
    npy["data"]["path"] = str(tmp_path / "data.txt")
    (tmp_path / "txt.yaml").write_text(yaml.safe_dump(npy))
    (tmp_path / "seed.yaml").write_text("name: sg\nbase: {data: {kind: synthetic, n: 16, dim: 5}, train: {steps: 5}}\n"
                                        "grid: {seed: [1, 2, 3]}\n")
    (tmp_path / "afile").write_text("x")
    names = {"bin": tmp_path / "bin.yaml", "cfg": tmp_path / "cfg.yaml", "npy_cfg": tmp_path / "npy.yaml", "txt_cfg": tmp_path / "txt.yaml",
             "seed_grid": tmp_path / "seed.yaml", "tmp": tmp_path, "tiny": tiny_root}
    one_line_error(cli(*[a.format(**names) for a in args]), *words)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("*.zarr"))


def test_an_unknown_ls_column_is_refused_where_no_run_has_a_config(tmp_path):
    """Found by a review: a root of module runs (none has a producer config) took ``--columns foo.bar``."""
    import torch

    import trajscope

    model = torch.nn.Linear(2, 1)
    with trajscope.ModuleRecorder(model, root=tmp_path, name="m") as rec:
        rec.record()
    one_line_error(cli("ls", "--root", str(tmp_path), "--columns", "foo.bar"), "no config field 'foo.bar'")
    shown = cli("ls", "--root", str(tmp_path), "--columns", "train.lr")  # a field of today's config: a blank cell
    assert shown.returncode == 0 and "train.lr" in shown.stdout, shown.stderr


def test_a_corrupt_chunk_is_one_line_on_every_reading_command(tiny_root, tmp_path, run_cli):
    """Found by a review: show, plot and export of a run with a corrupt chunk printed zarr's checksum ValueError
    as a 126-line traceback (fsck found it). One line, exit 1, naming fsck; export leaves no file."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(tiny_root / "a.zarr", root / "cor.zarr")
    chunk = sorted(p for p in (root / "cor.zarr" / "W" / "c").rglob("*") if p.is_file())[0]
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    for args in (("show", "cor"), ("plot", "cor", "loss", "-o", str(tmp_path / "x.png")),
                 ("export", "cor", "-o", str(tmp_path / "cor.nc"))):
        proc = run_cli(*args, "--root", str(root))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (args, proc.stderr[-500:])
        assert "fails its crc32c checksum" in lines[0] and "trajscope fsck" in lines[0]
        assert chunk.relative_to(root / "cor.zarr").as_posix() in lines[0]  # the chunk is named
    assert not (tmp_path / "cor.nc").exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("code, words, advice", [(30, "read-only", "use a writable --root"),
                                                 (13, "permission denied", "give this user access"),
                                                 (28, "no space left", "free space there")])
def test_a_file_system_that_refuses_writes_is_one_line(tmp_path, run_cli, small_config, monkeypatch, code, words,
                                                       advice):
    """Found by a review: a read-only root printed an OSError traceback from produce, resume, tag and rm (the
    writer lock's folder is the first thing written). The advice fits the error (it read "choose another --root
    or output file, or fix the folder's permissions or space" for all of them, odd for a command that reads)."""
    import os

    import yaml

    from trajscope.store import locks

    def refuse(root, path):
        raise OSError(code, os.strerror(code), os.path.dirname(path))

    monkeypatch.setattr(locks, "_open_lock_file", refuse)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    line = one_line_error(run_cli("produce", str(config), "--root", str(tmp_path / "ro"), "-q"),
                          words, ".locks", advice)
    assert "Traceback" not in line


def test_plot_help_names_every_figure_kind(run_cli):
    """Found by a review: the help listed 8 kinds; the generic ones were accepted but not named."""
    from trajscope.analysis import PLOT_KINDS

    text = " ".join(run_cli("plot", "--help").stdout.split())
    assert [k for k in PLOT_KINDS if k not in text] == []


def test_small_cli_readings_a_review_found(tmp_path, run_cli, small_config, tiny_root):
    """--set with an empty part, a negative --step, rm of one id twice, a diverged run's warning, the resume hint
    of an interrupted run, and the hint for a run whose producer died before its first commit."""
    import shutil
    import subprocess
    import sys

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    root = tmp_path / "runs"
    one_line_error(run_cli("produce", str(config), "--root", str(root), "--set", "train..lr=1"),
                   "an empty part in the field name 'train..lr'")
    one_line_error(run_cli("show", "a", "--root", str(tiny_root), "--step", "-5:"), "steps count from 0")
    diverged = run_cli("produce", str(config), "--root", str(root), "--name", "div", "-q", "--set", "train.lr=1e6")
    assert diverged.returncode == 0 and "the run diverged (try a smaller train.lr)" in diverged.stdout
    shutil.copytree(root / "div.zarr", root / "twice.zarr")
    gone = run_cli("rm", "twice", "twice", "--yes", "--root", str(root))
    assert gone.returncode == 0 and not (root / "twice.zarr").exists(), gone.stderr
    script = ("import os, torch, trajscope\n"
              f"rec = trajscope.ModuleRecorder(torch.nn.Linear(3, 2), root={str(root)!r}, name='dead')\n"
              "for _ in range(5): rec.record(loss=1.0)\n"
              "os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script], timeout=300).returncode == 9
    proc = run_cli("show", "dead", "--root", str(root))
    assert proc.returncode == 2 and "its producer stopped before the first chunk was full" in proc.stderr
    assert "ModuleRecorder(..., resume=True)" in proc.stderr and "wait for the producer" not in proc.stderr
