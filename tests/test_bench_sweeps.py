"""The accounting of the sweep-level benchmarks, on hand-written Ray result files."""
import json

import pytest

from bench._sweeps import SweepRun, read_reports
from bench.bench_sweep_efficiency import by_random_search_size, compute_to_reach


def write_trial(experiment, trial_id, reports):
    folder = experiment / f"run_trial_{trial_id}"
    folder.mkdir(parents=True)
    lines = [json.dumps({"trial_id": trial_id, "step": step, "fid": fid, "timestamp": at, "train_seconds": 2.0,
                         "eval_seconds": 1.0, "training_iteration": i + 1}) for i, (step, fid, at) in enumerate(reports)]
    (folder / "result.json").write_text("\n".join(lines) + "\n")


@pytest.fixture
def run(tmp_path):
    # Trial a runs to 300 steps; trial b is stopped at 100; reports interleave in time.
    write_trial(tmp_path, "a", [(100, 90.0, 1010), (200, 60.0, 1030), (300, 40.0, 1050)])
    write_trial(tmp_path, "b", [(100, 70.0, 1020)])
    return SweepRun(started_at=1000.0, finished_at=1060.0, reports=read_reports(tmp_path))


def test_reports_are_read_in_time_order_with_their_work(run):
    assert [(r.trial_id, r.step) for r in run.reports] == [("a", 100), ("b", 100), ("a", 200), ("a", 300)]
    assert run.trial_steps == 400 and run.work_seconds == 4 * 3.0 and run.best_fid == 40.0 and run.wall_seconds == 60.0


def test_compute_to_reach_counts_every_report_up_to_the_first_good_enough_one(run):
    reached = compute_to_reach(run, target_fid=65.0)
    assert reached == {"steps": 300, "work_seconds": 9.0, "wall_seconds": 30.0, "fid": 60.0, "trial_id": "a", "step": 200}
    assert compute_to_reach(run, target_fid=39.0) is None


def test_the_figure_per_random_search_size_cuts_the_search_to_its_first_trials(run, tmp_path):
    random_dir = tmp_path / "random"
    # c starts first (report at 1003 after 3 s of work) and is the worse; d starts later and is the best.
    write_trial(random_dir, "c", [(100, 80.0, 1003), (200, 50.0, 1006)])
    write_trial(random_dir, "d", [(100, 45.0, 1005), (200, 30.0, 1008)])
    random = SweepRun(1000.0, 1010.0, read_reports(random_dir))
    rows = by_random_search_size(random, run, tolerance=0.25, smallest=1)
    assert [(r["random_trials"], r["random_steps"], r["best_fid"]) for r in rows] == [(1, 200, 50.0), (2, 400, 30.0)]
    # ASHA's run first comes within 25% of 50 (62.5) with a's FID 60 at 300 trial-steps; it never gets within 25% of 30.
    assert rows[0]["asha_steps"] == 300 and rows[0]["steps_ratio"] == 1.5
    assert rows[1]["asha_steps"] is None and rows[1]["steps_ratio"] is None


def test_an_experiment_without_reports_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no trial reports"):
        read_reports(tmp_path)
