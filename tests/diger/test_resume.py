"""Resume after SIGKILL gives the same final metrics as an uninterrupted run (issue #7)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from diger.testing import small_config


def _args(root, out, epochs):
    cfg = small_config(root, output_dir=str(out), checkpoint_dir=str(out), epochs=epochs, stopping_step=10)
    return [f"--{k}={json.dumps(v)}" for k, v in cfg.items()]


@pytest.mark.parametrize("model", ["DIGER"])
def test_sigkill_then_resume_matches_uninterrupted(toy_root, model):
    from diger.quick_start import resume, run
    from diger.testing import small_config as sc

    epochs = 4
    full = run(model, "toy", None, sc(toy_root, output_dir=str(toy_root / "full"), epochs=epochs, stopping_step=10))

    out = toy_root / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "diger.cli", "run", "--model", model, "--dataset", "toy",
                             *_args(toy_root, out, epochs)], cwd=toy_root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = out / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "result.json").exists()
    saved = torch.load(last, weights_only=True)
    saved_epoch = saved["epoch"]
    assert saved_epoch < epochs - 1
    assert saved["elapsed_seconds"] > 0

    resumed = resume(str(out))
    assert resumed["resumed_from"].endswith("last.pth")
    # the whole run's wall clock: the time before the kill (to the last checkpoint) plus this process's
    assert resumed["wall_clock_seconds"] >= resumed["wall_clock_seconds_this_process"] + saved["elapsed_seconds"] - 0.01
    assert resumed["test_result"] == full["test_result"]
    assert resumed["best_valid_result"] == full["best_valid_result"]
    # how far training went survives the kill: the validation history is kept in last.pth
    assert resumed["training"] == full["training"]
    assert full["training"]["epochs_run"] == epochs and len(full["training"]["valid_history"]) == epochs
    assert [h["epoch"] for h in resumed["codebook"]["history"]] == [h["epoch"] for h in full["codebook"]["history"]]
    assert resumed["codebook"]["final"]["hash"] == full["codebook"]["final"]["hash"]

    # A run folder holding its checkpoints can be moved: resume follows the folder, not the old paths.
    moved = toy_root / "moved"
    out.rename(moved)
    again = resume(str(moved))
    assert again["test_result"] == full["test_result"]
    assert again["checkpoint"].startswith(str(moved.resolve())) and not out.exists()

    # Resuming a finished run re-evaluates its best checkpoint and leaves it untouched.
    before = open(full["checkpoint"], "rb").read()
    again = resume(str(toy_root / "full"))
    assert again["test_result"] == full["test_result"]
    assert again["wall_clock_seconds"] >= torch.load(os.path.join(os.path.dirname(full["checkpoint"]), "last.pth"), weights_only=True)["elapsed_seconds"]
    assert open(full["checkpoint"], "rb").read() == before


def test_resume_without_run_json_is_a_clear_error(toy_root):
    from diger.quick_start import resume

    with pytest.raises(FileNotFoundError, match="run.json not found"):
        resume(str(toy_root / "nothing-here"))


def test_resume_refuses_a_last_checkpoint_of_another_run(toy_root):
    """Two runs sharing one checkpoint_dir: the second overwrites last.pth; resuming the first says so."""
    from diger.quick_start import resume, run
    from diger.trainer import CheckpointError

    shared = toy_root / "shared"
    for name in ("a", "b"):
        run("TIGER", "toy", None, small_config(toy_root, output_dir=str(toy_root / name), checkpoint_dir=str(shared)))
        time.sleep(1.1)  # RecBole names the best checkpoint by the second
    resume(str(toy_root / "b"))  # its own last.pth: fine
    with pytest.raises(CheckpointError, match="belongs to another run .* share a checkpoint_dir"):
        resume(str(toy_root / "a"))


def test_training_summary_picks_recbole_best_epoch_and_early_stop():
    """``best_epoch`` is the epoch whose checkpoint RecBole keeps (the last of equal maxima: its early_stopping
    updates on ``value >= best``); ``stopped_early`` once ``cur_step`` passes ``stopping_step``."""
    from types import SimpleNamespace

    from recbole.utils import early_stopping

    from diger.trainer import SafeCheckpointTrainer

    scores = [0.10, 0.30, 0.20, 0.30, 0.25, 0.24, 0.23, 0.5]
    best, cur, stop, kept = -float("inf"), 0, False, None
    for epoch, v in enumerate(scores):
        best, cur, stop, update = early_stopping(v, best, cur, max_step=2, bigger=True)
        kept = epoch if update else kept
        if stop:
            break
    hist = [{"epoch": e, "valid_score": v} for e, v in enumerate(scores[:epoch + 1])]
    t = SimpleNamespace(valid_history=hist, cur_step=cur, stopping_step=2, eval_step=1)
    summary = SafeCheckpointTrainer.training_summary(t)
    assert stop and summary["stopped_early"] and summary["epochs_run"] == 7
    assert summary["best_epoch"] == kept == 3
