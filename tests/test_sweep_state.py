"""One sweep per name at a time (a lock in the storage path), and --resume only with the file the sweep started with
(or with changes to where things are, which are recorded)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import SMOKE_SPACE, smoke_sweep_command

from diffusion_core.config import ConfigError
from sweep.config import load_sweep
from sweep.launch import main
from sweep.preflight import check_experiment
from sweep.sweep_state import SweepLockedError, sweep_lock


def test_a_second_holder_is_refused_and_named(tmp_path):
    with sweep_lock(str(tmp_path), "s") as path:
        with pytest.raises(SweepLockedError, match=rf"sweep 's' is running already: pid {os.getpid()} on "):
            with sweep_lock(str(tmp_path), "s"):
                pass
        with sweep_lock(str(tmp_path), "other"):  # another name is another lock
            pass
    assert not (tmp_path / ".s.lock").exists() and path.endswith("/.s.lock")


def test_a_lock_left_by_a_dead_driver_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".s.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "start": "1", "time": 0}))
    with sweep_lock(str(tmp_path), "s"):
        assert json.loads((tmp_path / ".s.lock").read_text())["pid"] == os.getpid()


def test_resume_with_a_changed_space_is_refused_with_what_differs(tmp_path):
    cfg = load_sweep(SMOKE_SPACE, values={"sweep.storage_path": str(tmp_path)})
    experiment = str(tmp_path / cfg.name)
    assert check_experiment(cfg, experiment, resume=False) == {}  # a new sweep keeps its file
    (tmp_path / cfg.name / "tuner.pkl").write_bytes(b"")
    changed = load_sweep(SMOKE_SPACE, ["sweep.num_trials=9", "train.lr={loguniform: [1.0e-4, 1.0e-3]}", f"data.root={tmp_path}"],
                         {"sweep.storage_path": str(tmp_path)})
    with pytest.raises(ConfigError) as refused:
        check_experiment(changed, experiment, resume=True)
    message = str(refused.value)
    assert message.startswith(f"{SMOKE_SPACE}: --resume, but the file differs from the sweep's: ")
    assert "sweep.num_trials: 6 -> 9" in message and "train.lr.loguniform: [0.0003, 0.003] -> [0.0001, 0.001]" in message
    assert "data.root" not in message.split("(safe to change")[0] and message.count("\n") == 0
    moved = load_sweep(SMOKE_SPACE, [f"data.root={tmp_path}"], {"sweep.storage_path": str(tmp_path)})
    assert check_experiment(moved, experiment, resume=True) == {"data.root": (None, str(tmp_path))}


@pytest.mark.slow
def test_a_second_launch_of_a_running_sweep_exits_1_naming_the_holder(tmp_path):
    cmd, env = smoke_sweep_command(tmp_path, "sweep.num_trials=1", "train.max_steps=100")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "ray_results" / ".smoke.lock"
        deadline = time.time() + 300
        while not lock.exists():
            assert first.poll() is None and time.time() < deadline, "the first launch never took the lock"
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().splitlines() == [f"error: sweep 'smoke' is running already: pid {first.pid} on "
                                                      + second.stderr.split(" on ", 1)[1].strip()]
    finally:
        first.kill()
        first.wait()
    assert main([str(SMOKE_SPACE), "--dry-run"]) == 0  # a dry run takes no lock
