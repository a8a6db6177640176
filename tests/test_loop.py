"""The rung loop: rungs at every eval.every_steps, the minimum-FID model kept, and an exact continuation from the
last checkpoint, whatever ran in between (evaluations draw from the global RNG too)."""
from __future__ import annotations

import torch
from helpers import ScriptedEvaluator, tiny_config

from diffusion_core.checkpoint import load_checkpoint, load_model
from diffusion_core.loop import BEST, LAST, RungLoop, next_rung
from diffusion_core.trainer import Trainer

CFG = tiny_config(model={"base_channels": 8, "channel_mult": [1], "attention_resolutions": [], "num_heads": 1},
                  train={"batch_size": 8, "max_steps": 30, "ema_rates": [0.9, 0.99]}, eval={"every_steps": 10})


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def test_next_rung():
    assert [next_rung(s, 10, 25) for s in (0, 9, 10, 19, 20, 24)] == [10, 10, 20, 20, 25, 25]


def test_rungs_keep_the_minimum_fid_model_and_the_last_checkpoint(tmp_path):
    # two EMA rates per rung: (rate 0.9, rate 0.99) -> rung bests 5.0 (0.99), 3.0 (0.9), 4.0 (0.9)
    evaluator = ScriptedEvaluator([6.0, 5.0, 3.0, 7.0, 4.0, 8.0])
    loop = RungLoop(Trainer(CFG, device="cpu"), evaluator, tmp_path)
    rungs = []
    best = loop.run(rungs.append)
    assert [(r.step, r.improved, r.final) for r in rungs] == [(10, True, False), (20, True, False), (30, False, True)]
    assert [r.evaluation.best_rate for r in rungs] == [0.99, 0.9, 0.9]
    assert (best.step, best.fid, best.ema_rate) == (20, 3.0, 0.9)
    assert rungs[-1].metrics()["best_fid"] == 3.0 and rungs[-1].metrics()["fid"] == 4.0
    model, cfg, info = load_model(tmp_path / BEST)
    assert info["step"] == 20 and info["fid"] == 3.0 and info["ema_rate"] == 0.9 and cfg == CFG
    assert load_checkpoint(tmp_path / LAST)["step"] == 30
    # a trainer checkpoint stands for its best rung's EMA rate too
    assert load_model(tmp_path / LAST)[2]["ema_rate"] == 0.9


def test_a_restored_loop_continues_exactly(tmp_path):
    straight_rungs = []
    RungLoop(Trainer(CFG, device="cpu"), ScriptedEvaluator(), tmp_path / "straight").run(straight_rungs.append)

    ten_steps = CFG.model_copy(update={"train": CFG.train.model_copy(update={"max_steps": 10})})
    RungLoop(Trainer(ten_steps, device="cpu"), ScriptedEvaluator(), tmp_path / "first", extra={"run_id": "r1"}).run(lambda rung: None)

    torch.manual_seed(12345)  # a new process: other global RNG state, and an evaluator built in between
    resumed = RungLoop(Trainer(CFG, device="cpu"), ScriptedEvaluator(), tmp_path / "resumed")
    torch.randn(1000)
    assert resumed.restore(tmp_path / "first", may_change={"train.max_steps"}) and resumed.trainer.step == 10 and resumed.extra == {"run_id": "r1"}
    assert (tmp_path / "resumed" / BEST).read_bytes() == (tmp_path / "first" / BEST).read_bytes()
    rungs = []
    resumed.run(rungs.append)
    assert [_untimed(r.metrics()) for r in rungs] == [_untimed(r.metrics()) for r in straight_rungs[1:]]
    assert [r.losses for r in rungs] == [r.losses for r in straight_rungs[1:]]


def test_nothing_to_restore(tmp_path):
    assert not RungLoop(Trainer(CFG, device="cpu"), ScriptedEvaluator(), tmp_path).restore()
