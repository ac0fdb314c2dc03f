"""One process per run folder, resumed runs keep their options, a split with nothing held out
is refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from _data import TINY_MODEL, TINY_TRAIN, make_adata

from ptrag.cli import main
from ptrag.train.lock import LOCK_NAME, run_lock


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("folder")
    make_adata().write_h5ad(d / "d.h5ad")
    return d / "d.h5ad"


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--model", "state", "--target-cell-type", "CT1", "--out", str(out), *extra]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_lock_refuses_a_second_training_at_once(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    before = sorted(p.name for p in run.iterdir())
    assert main(_train(data, run, *TINY_TRAIN)) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "in use" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_a_stale_lock_is_taken_over_and_released(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    assert main(_train(data, run, *TINY_TRAIN)) == 0
    assert (run / "train_summary.json").is_file() and not (run / LOCK_NAME).exists()


def test_lock_is_released_on_error_and_leaves_no_empty_folder(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(RuntimeError), run_lock(run):
        assert (run / LOCK_NAME).is_file()
        raise RuntimeError("boom")
    assert not run.exists()


def test_two_trainings_started_on_one_folder(data, tmp_path):
    run = tmp_path / "run"
    # long enough that the second process (seconds of imports) starts while the first still trains
    args = _train(data, run, "--max-steps", "300", "--val-every", "150", *TINY_MODEL)
    first = subprocess.Popen([sys.executable, "-m", "ptrag", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (run / LOCK_NAME).exists(), "the first training never took the lock"
    second = subprocess.run([sys.executable, "-m", "ptrag", *args], capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 300 and not (run / LOCK_NAME).exists()
    assert len(list((run / "logs").rglob("metrics.csv"))) == 1  # one run's log, not a mix


def test_resume_refuses_options_that_change_the_model_and_applies_max_steps(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(data, run, *TINY_TRAIN)) == 0
    capsys.readouterr()
    assert main(_train(data, run, "--resume", "--hidden", "32", "--lr", "0.01")) == 2
    err = capsys.readouterr().err
    assert "--hidden: the run has 16, given 32" in err and "--lr: the run has 0.001, given 0.01" in err
    assert "--max-steps" in err  # the options that may change are listed
    assert main(_train(data, run, "--resume", "--max-steps", "6", "--hidden", "16")) == 0  # same value: fine
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6


def test_a_split_with_nothing_held_out_for_the_model_is_refused_before_training(tmp_path, capsys):
    a = make_adata(n_cell_types=1)
    a.write_h5ad(tmp_path / "one.h5ad")
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "one.h5ad"), "--model", "state", "--task", "unseen-perturbation"]
    assert main([*args, "--out", str(run), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "no validation or test group for --model state" in err and "state_genept" in err
    assert not run.exists()
