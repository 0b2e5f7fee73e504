"""Bad configs and absurd sizes are refused before anything is built or created (issue 8, items 3 and 6)."""

from __future__ import annotations

import sys

import pytest
import yaml

from trajscope.cli import main
from trajscope.producer import load_config, produce
from trajscope.producer.budget import check_budget, estimate
from trajscope.store import StoreRoot, UserError, open_run


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["trajscope", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code, capsys.readouterr().err


def produce_cli(monkeypatch, capsys, tmp_path, config: dict, *args: str) -> tuple[int, str]:
    """``trajscope produce`` of ``config`` (written to a file) with ``args``, into ``tmp_path/runs`` unless
    ``args`` name a root."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    root = [] if "--root" in args else ["--root", str(tmp_path / "runs")]
    return cli(monkeypatch, capsys, "produce", str(path), *root, "--name", "r", "--quiet", *args)


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=.nan", "train.lr=0", "train.lr=-0.1",
                                      "init.scale=.inf", "init.scale=.nan", "data.mu=.nan", "train.stop_loss=.inf"])
def test_non_finite_or_non_positive_values_are_refused_before_anything_exists(override, tmp_path, small_config):
    with pytest.raises(UserError, match=override.split("=")[0]):
        produce(small_config(), root=tmp_path / "runs", name="r", overrides=[override])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("data, words", [
    ({"seed": -1}, "data.seed: Input should be greater than or equal to 0"),
    ({"kind": "toy2d", "n": 6, "positive_degrees": [90, 30]},
     "positive_degrees is a range [low, high] in degrees, low first: write [30, 90]"),
    ({"kind": "toy2d", "n": 6, "negative_degrees": [250, 200]}, "negative_degrees"),
    ({"kind": "mnist", "seed": -3}, "data.seed")])
def test_data_seeds_and_angle_ranges_numpy_refuses_are_refused_first(data, words, tmp_path, small_config,
                                                                      monkeypatch, capsys):
    """Found by a review: a negative data seed and a toy2d angle range high-to-low were numpy tracebacks."""
    config = small_config()
    config["data"] = {**config["data"], **data} if "kind" not in data else data
    code, err = produce_cli(monkeypatch, capsys, tmp_path, config)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, field", [
    ("model.width=1000000000", "model.width"), ("data.n=1000000000", "data.n"),
    ("data.dim=1000000000", "data.dim"), ("train.steps=1000000000000", "train.steps")])
def test_absurd_sizes_are_refused_in_one_line_and_leave_nothing(override, field, tmp_path, small_config, monkeypatch,
                                                                 capsys):
    code, err = produce_cli(monkeypatch, capsys, tmp_path, small_config(), "--set", override)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err and "nothing was created" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, field", [
    ("train.steps=true", "train.steps"), ("train.lr=yes", "train.lr"), ("record.every=on", "record.every"),
    ("seed=false", "seed"), ("data.n=true", "data.n"), ("train.batch_size=true", "train.batch_size")])
def test_a_yes_or_no_for_a_number_is_refused_not_read_as_one(override, field, tmp_path, small_config, monkeypatch,
                                                           capsys):
    """pydantic takes ``true`` for the number 1 (found by a review: ``train.steps=true`` trained one step)."""
    code, err = produce_cli(monkeypatch, capsys, tmp_path, small_config(), "--set", override)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{field}: {'false' if override.endswith('false') else 'true'} is a yes/no value" in err, err
    assert not (tmp_path / "runs").exists()
    assert load_config(small_config(), ["train.train_v=no", "data.center=yes"]).train.train_v is False


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="no /proc here")
def test_a_root_on_a_pseudo_file_system_is_named_as_such(tmp_path, small_config, monkeypatch, capsys):
    """``--root /proc/x`` said "0.0 B is free", as if the disk were full."""
    code, err = produce_cli(monkeypatch, capsys, tmp_path, small_config(), "--root", "/proc/trajscope-x")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "under /proc, whose file system holds no files" in err and "nothing was created" in err, err


def test_empty_name_is_refused(tmp_path, small_config, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    code, err = cli(monkeypatch, capsys, "produce", str(config), "--root", str(tmp_path / "runs"), "--name", "",
                    "--quiet")
    assert code == 2 and "invalid run id ''" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_budget_against_independent_sizes(small_config, tmp_path):
    cfg = load_config(small_config(model={"width": 10}, train={"steps": 99}, data={"n": 30, "dim": 6}))
    budget = estimate(cfg, 30, 6)
    per_state = 4 * (10 * 6 + 10 + 30) + 8 * 3  # W, v, output (float32) + loss, step, t
    assert budget.states == 100 and budget.disk_bytes == 100 * per_state + 4 * 30 * 6 + 30
    root = StoreRoot(tmp_path / "runs")
    check_budget(cfg, root, 30, 6, memory=2**30, disk=2**30)
    with pytest.raises(UserError, match="would write about .* free under"):
        check_budget(cfg, root, 30, 6, memory=2**30, disk=budget.disk_bytes)
    with pytest.raises(UserError, match="of memory"):
        check_budget(cfg, root, 30, 6, memory=budget.memory_bytes, disk=2**30)


def test_the_memory_budget_counts_shared_chunk_buffers_only_for_a_writer_process(small_config):
    """A writer process (``record.writer: process``) may hold each chunk twice (pinned, then shared memory):
    its chunk buffers count double. ``auto`` (the thread since the H200's measurements) and ``thread`` once."""
    from trajscope.producer.budget import chunk_buffers
    from trajscope.store.layout import chunk_steps_for

    def memory(writer):
        return estimate(load_config(small_config(record={"writer": writer, "buffers": 4})), 30, 6).memory_bytes

    assert memory("auto") == memory("thread") < memory("process")
    cfg = load_config(small_config(record={"buffers": 4}))
    chunk = 4 * (8 * 6 + 8 + 30) + 24  # the default small config: width 8, n 30, dim 6
    buffers = chunk_buffers(cfg) * chunk_steps_for(4 * 8 * 6, int(cfg.record.chunk_mib * 2**20)) * chunk
    assert memory("process") - memory("thread") == buffers


def test_a_half_created_run_is_replaced_by_produce_name(tmp_path, small_config):
    root = StoreRoot(tmp_path)
    root.write_attrs("r", {})  # what an older trajscope left when killed while creating
    with pytest.raises(UserError, match="never fully created .*trajscope produce CONFIG --name r"):
        from trajscope.producer import resume

        resume("r", root=tmp_path)
    result = produce(small_config(), root=tmp_path, name="r")
    assert result.status == "complete" and open_run("r", tmp_path).sizes["step"] == 41


def test_a_run_whose_loss_diverges_ends_with_its_status_not_a_traceback(tmp_path, small_config):
    """Found by a review: a final loss of nan/inf (JSON holds neither) made the final document raise, and the
    run stayed ``running``. It is stored as null; the recorded losses keep what they were."""
    import math

    from trajscope.producer import produce
    from trajscope.store import StoreRoot, open_run

    result = produce(small_config(train={"lr": 1e6, "steps": 30}, init={"kind": "gaussian", "scale": 1.0}),
                     root=tmp_path, name="diverged")
    assert result.status == "complete" and not math.isfinite(result.final_loss)
    attrs = StoreRoot(tmp_path).read_attrs("diverged")
    assert attrs["status"] == "complete" and attrs["final_loss"] is None
    ds = open_run("diverged", tmp_path)
    last = float(ds["loss"].values[-1])
    assert not math.isfinite(last)
    # ... and says so (found by a review: null alone read as "no loss recorded" in ls and the dashboard)
    assert attrs["not_finite"] == {"final_loss": str(last)}


def test_a_key_given_twice_and_a_folder_for_a_config_are_one_line_each(tmp_path, monkeypatch, capsys):
    """Found by a review: ``train: {lr: 0.1, lr: 0.2}`` ran with the last value, silently, and a folder given as
    the config was "not found"."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 3\n  lr: 0.1\n  lr: 0.2\n")
    code, err = cli(monkeypatch, capsys, "config", str(twice))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "line 4: the key 'lr' is given twice" in err, err
    merged = tmp_path / "merged.yaml"  # a YAML merge key is no key given twice
    merged.write_text("train:\n  <<: {lr: 0.2}\n  steps: 3\n")
    assert load_config(merged).train.lr == 0.2 and load_config(merged).train.steps == 3
    from trajscope.producer.config import load_yaml

    # a merge source merged before its own turn holds the keys merged into it (PyYAML merges in place): no key
    # given twice (found by a review)
    nested = "base: &b {lr: 0.1}\na:\n  deep:\n    x: &x {<<: *b, lr: 0.2}\nc: {<<: *x, m: 1}\n"
    assert load_yaml(nested) == yaml.safe_load(nested) and load_yaml(nested)["c"] == {"lr": 0.2, "m": 1}
    for same in ("{1: x, 1.0: y}", "{null: 1, ~: 2}"):  # one key written two ways (found by a review)
        with pytest.raises(yaml.YAMLError, match="is given twice"):
            load_yaml(same)
    code, err = cli(monkeypatch, capsys, "config", "--set", "train={lr: 1, lr: 2}")  # (in a --set value: was taken
    assert code == 2 and "in its value, the key 'lr' is given twice" in err, err  # as a string, refused as one)
    folder = tmp_path / "configs"
    folder.mkdir()
    code, err = cli(monkeypatch, capsys, "config", str(folder))
    assert code == 2 and f"config file {folder} is a folder: pass a YAML file" in err, err


@pytest.mark.parametrize("override, words", [
    ("train.device=tpu", "train.device: unknown device 'tpu': use auto, cpu or cuda[:N]"),
    ("train.device=cuda:01", "train.device: unknown device 'cuda:01'"),  # (torch refuses it: a review)
])
def test_trajscope_config_refuses_what_produce_refuses(override, words, tmp_path, small_config, monkeypatch, capsys):
    """Found by a review: ``trajscope config`` (which validates every field) printed a config with ``train.device=tpu``,
    that ``produce`` then refused. Both commands say so in one line now; a CUDA device is a valid field here with no
    GPU (it is checked when a run starts)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    for command in ("config", "produce"):
        args = [command, str(config), "--set", override] + (["--root", str(tmp_path / "runs")] if command == "produce"
                                                            else [])
        code, err = cli(monkeypatch, capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (command, err)
    assert not (tmp_path / "runs").exists()
    for device in ("cuda:1", "cpu:0"):  # (cpu:0 ran before: a stored run's config with it still loads)
        assert load_config(small_config(), [f"train.device={device}"]).train.device == device
