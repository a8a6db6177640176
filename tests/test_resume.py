"""Driver killed mid-sweep (SIGKILL), then `--resume`: the sweep finishes, unfinished trials continue from their
checkpoints exactly as an uninterrupted run of the same trial (every metric equal), MLflow ends with exactly one
child run per trial and none left RUNNING, and a resume with a changed file is refused."""
import json
import signal
import subprocess
import time

import optuna
import torch
from helpers import SMOKE_SPACE, smoke_sweep_command, sweep_runs

from diffusion_core.evaluate import Evaluator
from diffusion_core.loop import RungLoop
from diffusion_core.trainer import Trainer
from sweep.config import load_sweep


def _checkpoints(tmp_path):
    return list((tmp_path / "ray_results" / "resumed").glob("run_trial_*/checkpoint_*"))


def test_sigkill_driver_then_resume_finishes_without_losing_or_duplicating(tmp_path, small_sweep_fid_cache):
    cmd, env = smoke_sweep_command(tmp_path, "name=resumed", "sweep.num_trials=3", "sweep.scheduler.grace_period=300",
                                   "eval.num_samples=32", "eval.reference_images=128", fid_cache=small_sweep_fid_cache)
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not _checkpoints(tmp_path):
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        assert time.time() < deadline, "no checkpoint within 15 minutes"
        time.sleep(1)
    # Kill only once the driver has saved its experiment state after that checkpoint (it does so at
    # most every 10 s): what a resume can continue from is what the driver had recorded.
    first = min(p.stat().st_mtime for p in _checkpoints(tmp_path))
    state_files = lambda: list((tmp_path / "ray_results" / "resumed").glob("experiment_state-*.json"))
    while not any(p.stat().st_mtime > first + 1 for p in state_files()):
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(5)

    changed = subprocess.run(cmd + ["--resume", "--set", "eval.num_samples=16"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "--resume, but the file differs from the sweep's: eval.num_samples: 32 -> 16" in changed.stderr

    proc = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    trial_dirs = [p for p in (tmp_path / "ray_results" / "resumed").iterdir() if p.name.startswith("run_trial_")]
    assert len(trial_dirs) == 3
    for folder in trial_dirs:
        steps = [json.loads(line)["step"] for line in (folder / "result.json").read_text().splitlines()]
        assert steps[-1] == 300

    client, parents, children = sweep_runs(tmp_path, "resumed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["diffusion_sweep.trial_id"] for c in children]
    assert len(children) == 3 and len(set(trial_ids)) == 3, trial_ids
    assert all(c.info.status == "FINISHED" and c.data.tags["diffusion_sweep.status"] == "completed" for c in children)
    restored = [int(c.data.tags.get("restored_at_step", 0)) for c in children]
    assert max(restored) >= 100, f"no trial continued from a checkpoint: {restored}"
    for child in children:
        steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "fid")})
        assert steps == [100, 200, 300]
    interrupted = [c.data.tags["diffusion_sweep.trial_id"] for c, step in zip(children, restored) if step > 0]
    for folder in trial_dirs:
        if any(folder.name.startswith(f"run_trial_{trial_id}") for trial_id in interrupted):
            _assert_same_as_uninterrupted(cmd, folder, tmp_path / "reference" / folder.name)

    # The Optuna history is kept: the stored study holds each trial once, the ones asked before the kill included,
    # with the values Ray ran them with.
    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{tmp_path / 'ray_results' / 'resumed' / 'optuna_study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    ray_params = sorted(json.dumps(json.loads((f / "params.json").read_text()), sort_keys=True) for f in trial_dirs)
    assert sorted(json.dumps(t.params, sort_keys=True) for t in study.trials) == ray_params
    assert len(list((tmp_path / "ray_results" / "resumed").glob("searcher-state-*.pkl"))) == 2  # one per driver


def _assert_same_as_uninterrupted(cmd: list[str], trial_dir, folder) -> None:
    """The trial's reported rungs equal those of the same configuration trained here without interruption, on one
    thread as the trial ran (every metric bit for bit)."""
    overrides = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    cfg = load_sweep(SMOKE_SPACE, overrides).run_config(json.loads((trial_dir / "params.json").read_text()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rungs = []
        RungLoop(Trainer(cfg, device="cpu"), Evaluator(cfg, "cpu"), folder).run(rungs.append)
    finally:
        torch.set_num_threads(threads)
    reported = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    keys = ("loss", "fid", "kid", "kid_std", "best_fid")
    by_step = {r["step"]: {k: r[k] for k in keys} for r in reported}  # a rung reported again after a restart is the same
    assert by_step == {r.step: {k: r.metrics()[k] for k in keys} for r in rungs}
