"""--dry-run's placement and cost estimate: ASHA's rungs as Ray computes them, trial-steps and samples under
pruning and without, warm-up warnings, node types and prices from the cluster settings."""
from __future__ import annotations

import pytest
from helpers import REPO

from diffusion_core.config import ConfigError
from sweep import estimate
from sweep.config import load_sweep
from sweep.launch import main
from sweep.nodes import describe_placement, load_cluster_spec, place

CIFAR = REPO / "search_spaces" / "cifar.yaml"
GPU_YAML = REPO / "cluster" / "gpu.yaml"


def test_cifar_rungs_and_budget_by_hand():
    """grace 12,000, η 3, max 60,000, evaluations every 12,000: rungs 12k and 36k; a trial trains 12k, a third
    of them 24k more, a ninth the last 24k: 64 × 22,667 trial-steps expected, 64 × 60k without pruning."""
    cfg = load_sweep(CIFAR)
    b = estimate.budget(cfg)
    assert b.rungs == [12_000, 36_000]
    assert b.expected_steps == pytest.approx(64 * (12_000 + 24_000 / 3 + 24_000 / 9))
    assert b.worst_steps == 64 * 60_000
    per_eval = 5_000 * 2  # eval.num_samples x the two EMA rates of the bank
    assert b.worst_samples == 64 * 5 * per_eval
    assert b.expected_samples == pytest.approx(64 * per_eval * (1 + 2 / 3 + 2 / 9))


def test_rungs_land_on_the_first_evaluation_after_asha_s_milestone():
    cfg = load_sweep(CIFAR, ["sweep.scheduler.grace_period=5000", "eval.every_steps=4000"])
    assert estimate.asha_milestones(5000, 60_000, 3) == [5_000, 15_000, 45_000]
    assert estimate.rung_steps(cfg) == [8_000, 16_000, 48_000]


def test_fifo_prunes_nothing():
    b = estimate.budget(load_sweep(CIFAR, ["sweep.scheduler.type=fifo"]))
    assert b.rungs == [] and b.expected_steps == b.worst_steps and b.expected_samples == b.worst_samples


def test_shipped_cifar_rungs_measure_the_model_and_the_old_ones_are_warned_about():
    assert estimate.warmup_warnings(load_sweep(CIFAR)) == []
    old = load_sweep(CIFAR, ["sweep.scheduler.grace_period=6000", "eval.every_steps=6000",
                             "train.ema_rates={choice: [0.999, 0.9995, 0.9999]}"])
    warnings = estimate.warmup_warnings(old)
    assert any("step 6,000" in w and "10,000 steps for rate 0.9999" in w for w in warnings)
    assert not any("rate 0.999," in w for w in warnings), "0.999 (1,000 steps) has forgotten a warm-up ending at 5,000"
    inside = estimate.warmup_warnings(load_sweep(CIFAR, ["sweep.scheduler.grace_period=4000", "eval.every_steps=4000"]))
    assert any("inside the warm-up" in w for w in inside)


def test_dry_run_of_cifar_prints_rungs_steps_gpu_hours_cost_and_placement(capsys):
    assert main([str(CIFAR), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ASHA rungs at steps: 12,000, 36,000" in out
    assert "trial-steps: 1,450,667 expected" in out and "3,840,000 with no pruning" in out
    assert "GPU-hours:" in out and "cost: ~$" in out and "not measured" in out
    assert "trial(s) of {cpu: 4, gpu: 1} per node" in out


def test_measured_throughput_is_labelled(monkeypatch):
    monkeypatch.setattr(estimate, "MEASURE_SECONDS", 0.05)
    cfg = load_sweep(REPO / "search_spaces" / "smoke.yaml")
    speed = estimate.throughput(cfg, measure=True)
    assert speed.train_steps_per_second > 0 and speed.samples_per_second > 0
    assert speed.source.startswith("measured here on cpu")
    assert estimate.throughput(cfg, measure=False) is None


def test_node_types_prices_and_placement(monkeypatch):
    monkeypatch.setenv("DIFFUSION_SWEEP_NODE_PRICES", "head=0.5 gpu_1x_a10g=1 gpu_4x_a10g=5")
    spec = load_cluster_spec(GPU_YAML)
    assert spec.head == "head" and spec.types["gpu_1x_a10g"].price_per_hour == 1.0
    assert spec.types["gpu_4x_a10g"].trials_per_node(4, 1) == 4 and spec.types["gpu_1x_a10g"].trials_per_node(4, 0.5) == 1
    many = place(spec, 4, 1, 100)  # more trials than max_workers allows at once
    assert sum(n * many.per_node[t] for t, n in many.nodes.items()) + many.waiting == 100 and many.waiting > 0
    assert "no node type" in describe_placement(spec, 64, 1, 2)[0]
    monkeypatch.setenv("DIFFUSION_SWEEP_NODE_PRICES", "head=cheap")
    with pytest.raises(ConfigError, match="DIFFUSION_SWEEP_NODE_PRICES"):
        load_cluster_spec(GPU_YAML)
