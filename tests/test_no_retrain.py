"""What is searched without retraining: the EMA bank (several EMA rates from one training) and the
sampling study (sampler, steps, eta on a trained checkpoint, forward passes only)."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import FID_WEIGHTS, ema_model, require, tiny_config

from diffusion_core.config import ConfigError
from diffusion_core.evaluate import BankEvaluation, EvalResult, Evaluator
from diffusion_core.metrics import InceptionFeatures
from diffusion_core.samplers import SAMPLING_KEYS
from diffusion_core.trainer import Trainer
from sweep.config import parse_sweep
from sweep.sampling_study import run_sampling_study, study_config

STEPS = 20


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("rate", [0.9, 0.99])
@pytest.mark.slow
def test_each_ema_of_the_bank_equals_an_ema_trained_alone_with_that_rate(rate):
    bank = Trainer(tiny_config(train={"ema_rates": [0.95, 0.9, 0.99], "ema_warmup_steps": 5}), device="cpu")
    bank.train_until(STEPS)
    alone = Trainer(tiny_config(train={"ema_rates": rate, "ema_warmup_steps": 5}), device="cpu")
    alone.train_until(STEPS)
    assert list(bank.emas.models()) == [0.95, 0.9, 0.99]
    for banked, single in zip(_weights(bank.emas.models()[rate]), _weights(ema_model(alone)), strict=True):
        torch.testing.assert_close(banked, single, rtol=0, atol=0)
    different = _weights(bank.emas.models()[0.95])
    assert any(not torch.equal(a, b) for a, b in zip(different, _weights(ema_model(alone)), strict=True))


@pytest.mark.slow
def test_bank_survives_checkpoint_and_rejects_a_checkpoint_of_another_bank(tmp_path):
    cfg = tiny_config(train={"ema_rates": [0.9, 0.999]})
    first = Trainer(cfg, device="cpu")
    first.train_until(10)
    path = first.save_checkpoint(tmp_path / "trainer.pt")
    first.train_until(20)
    resumed = Trainer(cfg, device="cpu")
    resumed.load_checkpoint(path)
    resumed.train_until(20)
    for rate, model in first.emas.models().items():
        for a, b in zip(_weights(model), _weights(resumed.emas.models()[rate]), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = Trainer(tiny_config(train={"ema_rates": [0.5]}), device="cpu")
    with pytest.raises(ConfigError, match=r"continues a run trained with another config \(train.ema_rates: \[0.9, 0.999\] -> \[0.5\]\)"):
        other.load_checkpoint(path)


def _result(fid: float, seconds: float = 1.0) -> EvalResult:
    return EvalResult(fid=fid, kid=fid / 100, kid_std=0.0, seconds=seconds, grid=torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_bank_evaluation_reports_the_best_rate_and_every_rate():
    bank = BankEvaluation({0.99: _result(30.0), 0.9: _result(20.0, 2.0), 0.999: _result(25.0)})
    metrics = bank.metrics()
    assert bank.best_rate == 0.9 and metrics["fid"] == 20.0 and metrics["ema_rate"] == 0.9
    assert metrics["eval_seconds"] == 4.0
    assert {k: v for k, v in metrics.items() if k.startswith("fid_ema_")} == {"fid_ema_0.99": 30.0, "fid_ema_0.9": 20.0, "fid_ema_0.999": 25.0}
    assert "fid_ema_0.9" not in BankEvaluation({0.9: _result(20.0)}).metrics()


SEARCH = {"trials": 3, "num_samples": 16, "seed": 0, "sampler": {"choice": ["ddim", "ddpm"]},
          "sampling_steps": {"int": [5, 20]}, "eta": {"uniform": [0.0, 1.0], "if": {"eval.sampler": "ddim"}}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 200-step digits model, then a 3-configuration sampling study on its EMA with optimizers forbidden."""
    require(FID_WEIGHTS, "FID Inception weights")
    sections = {"train": {"max_steps": 200}, "eval": {"sampling_steps": 50, "sampler": "ddim", "num_samples": 16,
                                                       "kid_subset_size": 16, "cache_dir": str(tmp_path_factory.mktemp("fid"))}}
    cfg = tiny_config(**sections)
    sweep = parse_sweep({"name": "study", **cfg.model_dump(include={"data", "model", "diffusion", "train"}),
                         "eval": {**cfg.eval.model_dump(), "search": SEARCH}})
    trainer = Trainer(cfg, device="cpu")
    trainer.train_until(200)
    model = ema_model(trainer)
    before = _weights(model)
    features = InceptionFeatures(FID_WEIGHTS, device="cpu")
    forbidden = pytest.MonkeyPatch()
    forbidden.setattr(torch.optim.Optimizer, "step", lambda *a, **k: pytest.fail("the sampling study ran an optimizer step"))
    try:
        result = run_sampling_study(model, trainer.schedule, cfg, sweep.sampling_search, features)
    finally:
        forbidden.undo()
    return {"cfg": cfg, "result": result, "model": model, "before": before, "trainer": trainer, "features": features}


@pytest.mark.slow
def test_sampling_study_is_at_least_as_good_as_the_default_on_the_same_seeds(study):
    result, cfg = study["result"], study["cfg"]
    assert len(result.trials) == 3 and result.num_samples == 16
    assert result.best.fid <= result.default.fid
    assert all(math.isfinite(t.fid) for t in result.trials)
    assert {"eval.sampler", "eval.sampling_steps"} <= set(result.trials[0].params)
    for t in result.trials:
        assert ("eval.eta" in t.params) == (t.params["eval.sampler"] == "ddim")
    rescored = Evaluator(study_config(cfg, 16, result.default.params), "cpu", study["features"])(study["model"], study["trainer"].schedule)
    assert rescored.fid == pytest.approx(result.default.fid, rel=1e-6), "default not scored on the study's seeds and budget"
    metrics = result.metrics()
    assert metrics["sampling_best_fid"] <= metrics["sampling_default_fid"]
    table = result.table()
    assert table["configuration"][0] == "default" and len(table["fid"]) == 4


@pytest.mark.slow
def test_sampling_study_never_changes_the_network(study):
    for a, b in zip(study["before"], _weights(study["model"]), strict=True):
        assert torch.equal(a, b)
    settings = study["result"].best_settings(study["cfg"])
    assert set(settings) == {f"eval.{key}" for key in SAMPLING_KEYS}  # threshold_percentile included
