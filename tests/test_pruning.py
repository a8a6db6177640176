"""Noise-aware ASHA (sweep.pruning): ties with the cutoff within the rung FID's noise go on, clear losers stop, the
rung records real FIDs, and without a noise estimate it decides as Ray's ASHA; the sweep file switches it on."""
import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweep.config import parse_sweep
from sweep.pruning import NoiseAwareASHA
from sweep.runner import make_scheduler

ARGS = {"time_attr": "step", "metric": "fid", "mode": "min", "max_t": 900, "grace_period": 100, "reduction_factor": 3}


def trial(name):
    return SimpleNamespace(trial_id=name)


def decide(scheduler, results):
    """Feed (trial, fid, fid_std) results at step 100 in order; the decision for each."""
    out = []
    for name, fid, std in results:
        t = trial(name)
        scheduler.on_trial_add(None, t)
        out.append(scheduler.on_trial_result(None, t, {"step": 100, "fid": fid, "fid_std": std}))
    return out


# Three trials recorded at the rung, then the one judged. Ray's cutoff is the (1 - 1/3) quantile of the rewards
# (-FID): -46.67, so a trial goes on at FID <= 46.67.
RECORDED = [("a", 40.0, 2.0), ("b", 50.0, 2.0), ("c", 60.0, 2.0)]


@pytest.mark.parametrize(("fid", "std", "plain", "noise_aware"), [
    (48.0, 2.0, TrialScheduler.STOP, TrialScheduler.CONTINUE),  # 1.3 above the cutoff, within 1 sigma: a tie
    (52.0, 2.0, TrialScheduler.STOP, TrialScheduler.STOP),  # 5.3 above: more than 1 sigma, a loser
    (48.0, float("nan"), TrialScheduler.STOP, TrialScheduler.STOP),  # no noise estimate: ASHA's rule
    (45.0, 2.0, TrialScheduler.CONTINUE, TrialScheduler.CONTINUE),  # better than the cutoff
])
def test_a_trial_within_its_noise_of_the_cutoff_goes_on(fid, std, plain, noise_aware):
    assert decide(ASHAScheduler(**ARGS), [*RECORDED, ("d", fid, std)])[-1] == plain
    assert decide(NoiseAwareASHA(noise_metric="fid_std", z=1.0, **ARGS), [*RECORDED, ("d", fid, std)])[-1] == noise_aware


def test_the_tie_band_scales_with_z_and_the_rung_records_the_real_fid():
    wide = NoiseAwareASHA(noise_metric="fid_std", z=3.0, **ARGS)
    assert decide(wide, [*RECORDED, ("d", 52.0, 2.0)])[-1] == TrialScheduler.CONTINUE
    rung = dict(wide._brackets[0]._rungs)[100]
    assert rung["d"] == -52.0  # Ray keeps rewards (-FID for mode=min), not the tolerance-shifted value


def test_without_noise_it_decides_exactly_as_ashas_over_a_stream_of_results():
    stream = [(f"t{i}", fid, float("nan")) for i, fid in enumerate([70, 40, 65, 30, 90, 35, 50, 45, 80, 20])]
    assert decide(NoiseAwareASHA(noise_metric="fid_std", **ARGS), stream) == decide(ASHAScheduler(**ARGS), stream)


def test_it_survives_the_pickling_tune_does_on_save_and_restore(tmp_path):
    scheduler = NoiseAwareASHA(noise_metric="fid_std", z=1.0, **ARGS)
    decide(scheduler, RECORDED)
    scheduler.save(str(tmp_path / "scheduler.pkl"))
    restored = NoiseAwareASHA(noise_metric="fid_std", z=1.0, **ARGS)
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert decide(restored, [("d", 48.0, 2.0)]) == [TrialScheduler.CONTINUE]
    assert pickle.loads(pickle.dumps(restored))._brackets[0]._noise is not None


def sweep_file(**scheduler):
    return parse_sweep({"name": "s", "data": {"dataset": "digits"}, "train": {"max_steps": 300, "lr": {"choice": [1e-3]}},
                        "eval": {"every_steps": 100}, "sweep": {"scheduler": scheduler}})


def test_the_sweep_file_chooses_plain_or_noise_aware_asha():
    cfg = sweep_file(type="asha", noise_aware=True, noise_z=2.0)
    scheduler = make_scheduler(cfg, cfg.run_config({}))
    assert isinstance(scheduler, NoiseAwareASHA) and scheduler._brackets[0]._z == 2.0
    cfg = sweep_file(type="asha", noise_aware=False)
    assert type(make_scheduler(cfg, cfg.run_config({}))) is ASHAScheduler
