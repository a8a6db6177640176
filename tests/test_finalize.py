"""Data-parallel training of the winner (`python -m sweep.finalize`): the Trainer's shard hook (K processes train
the run one process trains, and a restored run repeats itself exactly), the rung loop of a rank other than 0, and
the command end to end on the smoke sweep."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import FID_WEIGHTS, image_steps, store_uri, sweep_runs, tiny_config
from mlflow.tracking import MlflowClient

from diffusion_core.checkpoint import load_model
from diffusion_core.config import ConfigError
from diffusion_core.loop import BEST, LAST, RungLoop
from diffusion_core.trainer import Shard, Trainer
from sweep.config import parse_sweep
from sweep.finalize import Winner, final_config, scaling
from sweep.registry import CHAMPION
from sweep.report.collect import from_tracker
from sweep.tracking import RunRecord, open_tracker

STEPS = 12


def ddp_config(dropout: float):
    return tiny_config(model={"dropout": dropout, "class_conditional": True}, train={"warmup_steps": 3, "max_steps": STEPS})


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in trainer.model.named_parameters()}


def _data_parallel_worker(rank: int, world_size: int, folder: str, dropout: float) -> None:
    """Rank ``rank``: train STEPS straight; then half of them, restore rank 0's checkpoint in a new trainer, the rest."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        cfg, shard = ddp_config(dropout), Shard(rank, world_size)
        straight = Trainer(cfg, "cpu", shard=shard)
        losses = straight.train_until(1)
        grads = _grads(straight)
        losses += straight.train_until(STEPS)
        first = Trainer(cfg, "cpu", shard=shard)
        first.train_until(STEPS // 2)
        if rank == 0:
            first.save_checkpoint(Path(folder) / "half.pt")
        dist.barrier()
        resumed = Trainer(cfg, "cpu", shard=shard)
        resumed.load_checkpoint(Path(folder) / "half.pt")
        resumed.train_until(STEPS)
        torch.save({"straight": _weights(straight), "resumed": _weights(resumed), "losses": losses, "grads": grads},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_data_parallel(folder: Path, dropout: float, world_size: int = 2) -> list[dict]:
    mp.spawn(_data_parallel_worker, args=(world_size, str(folder), dropout), nprocs=world_size, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def test_a_shard_takes_every_kth_item_and_the_shards_cover_the_batch():
    batch = torch.arange(12)
    shards = [Shard(r, 3).take(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    with pytest.raises(ValueError, match="rank 3"):
        Shard(3, 3)


def test_a_batch_that_does_not_split_into_equal_shards_is_refused():
    with pytest.raises(ValueError, match="batch_size 16 does not split into 3"):
        Trainer(ddp_config(0.0), "cpu", shard=Shard(0, 3))


def test_two_processes_train_the_run_one_process_trains(tmp_path):
    """Without dropout, DDP over two shards of each global batch (same images, timesteps, noises and labels as
    one process draws) computes one process's gradient and losses, up to float summation order. (Weights are
    compared loosely: Adam turns float noise in a near-zero gradient into a step of up to lr.)"""
    ranks = run_data_parallel(tmp_path, dropout=0.0)
    single = Trainer(ddp_config(0.0), "cpu")
    losses = single.train_until(1)
    grads = _grads(single)
    losses += single.train_until(STEPS)
    for rank in ranks:
        assert rank["losses"] == pytest.approx(losses, rel=1e-4)
        for key, value in grads.items():
            torch.testing.assert_close(rank["grads"][key], value, rtol=1e-4, atol=1e-7, msg=key)
        for key, value in _weights(single).items():
            torch.testing.assert_close(rank["straight"][key], value, rtol=0, atol=1e-3, msg=key)


def test_a_restored_data_parallel_run_repeats_itself_exactly(tmp_path):
    """With dropout (each rank's own masks), every rank restored from rank 0's checkpoint continues exactly as
    the uninterrupted run, and the ranks hold the same weights."""
    ranks = run_data_parallel(tmp_path, dropout=0.2)
    for rank in ranks:
        for key, value in rank["straight"].items():
            assert torch.equal(rank["resumed"][key], value), key
            assert torch.equal(ranks[0]["straight"][key], value), key


def test_a_loop_without_an_evaluator_only_trains(tmp_path):
    """A data-parallel rank other than 0: rung by rung to max_steps, no evaluation, no checkpoint files."""
    cfg = tiny_config(train={"max_steps": 30}, eval={"every_steps": 10})
    rungs = []
    RungLoop(Trainer(cfg, "cpu"), None, tmp_path).run(rungs.append)
    assert [r.step for r in rungs] == [10, 20, 30] and [r.final for r in rungs] == [False, False, True]
    assert all(r.evaluation is None and r.model is None and not r.improved for r in rungs)
    assert set(rungs[0].metrics()) == {"loss", "train_seconds"}
    assert not (tmp_path / LAST).exists() and not (tmp_path / BEST).exists()


def winner(final: dict | None = None, sampling: dict | None = None, resources: dict | None = None) -> Winner:
    sweep = parse_sweep({"name": "w", "train": {"lr": {"loguniform": [1e-4, 1e-2]}}, "final": final or {},
                         "sweep": {"resources_per_trial": resources or {"cpu": 2, "gpu": 0}}}, "w.yaml")
    cfg = tiny_config(train={"ema_rates": [0.9, 0.99], "max_steps": 300}, eval={"every_steps": 100, "num_samples": 32})
    parent = RunRecord("p", "1", "w", "FINISHED", 0, {}, {}, {})
    return Winner(parent, sweep, "r" * 32, cfg, 0.99, sampling or {})


def test_the_final_run_is_the_winner_with_the_final_budget_its_ema_rate_and_best_sampling():
    cfg = final_config(winner({"steps": 900, "num_samples": 64}, {"eval.sampler": "ddpm", "eval.sampling_steps": 12}), None, 2)
    assert (cfg.name, cfg.train.max_steps, cfg.train.ema_rates, cfg.train.lr) == ("w-final", 900, [0.99], 1e-3)
    assert (cfg.eval.every_steps, cfg.eval.num_samples, cfg.eval.sampler, cfg.eval.sampling_steps) == (100, 64, "ddpm", 12)
    assert final_config(winner(), 60, 1).train.max_steps == 60, "--steps overrides final.steps"
    assert final_config(winner(), None, 1).train.max_steps == 300, "no final.steps: a trial's train.max_steps"


def test_a_budget_that_cannot_run_is_one_config_error():
    with pytest.raises(ConfigError, match="--workers 3: train.batch_size 16 does not split into 3 equal shards"):
        final_config(winner(), None, 3)
    with pytest.raises(ConfigError, match=r"the final run of sweep 'w': \(top level\): eval.sampling_steps 500 exceeds diffusion.timesteps 100"):
        final_config(winner(sampling={"eval.sampling_steps": 500}), None, 1)
    with pytest.raises(ConfigError, match="w.yaml: final.resources_per_worker.gpu: 0.5; DDP needs whole GPUs per worker"):
        scaling(winner({"resources_per_worker": {"cpu": 1, "gpu": 0.5}}).sweep, 2)


def test_workers_get_a_trials_cpus_and_whole_gpus():
    on_cpu = scaling(winner().sweep, 2)
    assert (on_cpu.num_workers, on_cpu.use_gpu, on_cpu.resources_per_worker) == (2, False, {"CPU": 2})
    on_gpu = scaling(winner(resources={"cpu": 4, "gpu": 0.25}).sweep, 4)
    assert (on_gpu.use_gpu, on_gpu.resources_per_worker) == (True, {"CPU": 4, "GPU": 1})


def finalize(work: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sweep.finalize", "smoke", "--tracking-uri", store_uri(work),
           "--storage-path", str(work / "ray_results"), *flags]
    return subprocess.run(cmd, cwd=work, env={**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)},
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def finalized(smoke_sweep, tmp_path_factory) -> tuple[Path, str]:
    """`python -m sweep.finalize smoke --steps 60 --workers 2` after the smoke sweep, on a copy of its MLflow store
    (the session's smoke sweep stays as the other tests read it; new artifacts land beside the original's)."""
    work, _ = smoke_sweep
    copy = tmp_path_factory.mktemp("finalized")
    shutil.copy(work / "mlflow.db", copy / "mlflow.db")
    proc = finalize(copy, "--steps", "60", "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return copy, proc.stdout + proc.stderr


def final_runs(work: Path) -> tuple[MlflowClient, Any, list]:
    client, (parent,), children = sweep_runs(work, "smoke")
    return client, parent, [c for c in children if c.data.tags.get("role") == "final"]


@pytest.mark.slow
def test_finalize_trains_the_winner_on_two_workers_under_the_parent_and_registers_the_champion(finalized):
    work, output = finalized
    client, parent, (final,) = final_runs(work)
    assert final.info.status == "FINISHED" and final.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (final.data.tags["final.workers"], final.data.tags["final.steps"]) == ("2", "60")
    assert final.data.params["best_trial_run_id"] == parent.data.tags["best_run_id"]
    assert final.data.params["train.lr"] == parent.data.tags["best.train.lr"]
    assert [m.step for m in client.get_metric_history(final.info.run_id, "fid")] == [60]
    assert image_steps(client, final.info.run_id, "samples") == [60]
    folder = work / "final_model"
    folder.mkdir()
    _, cfg, info = load_model(client.download_artifacts(final.info.run_id, "checkpoints/checkpoint_best.pt", str(folder)))
    _, best_cfg, best_info = load_model(client.download_artifacts(parent.data.tags["best_run_id"], "checkpoints/checkpoint_best.pt", str(folder)))
    assert (cfg.train.max_steps, cfg.train.ema_rates, cfg.eval.num_samples) == (60, [best_info["ema_rate"]], 128)
    assert cfg.model == best_cfg.model and cfg.diffusion == best_cfg.diffusion and cfg.train.lr == best_cfg.train.lr
    sampling = json.loads(parent.data.tags.get("best_sampling", "{}"))
    assert all(getattr(cfg.eval, key.removeprefix("eval.")) == value for key, value in sampling.items())

    champion = client.get_model_version_by_alias("smoke", CHAMPION)
    assert champion.run_id == final.info.run_id and champion.tags["role"] == "final" and champion.tags["sweep"] == "smoke"
    assert float(champion.tags["fid"]) == pytest.approx(final.data.metrics["best_fid"]) and champion.tags["fid_num_samples"] == "128"
    assert client.get_run(parent.info.run_id).data.tags["final_model"] == f"models:/smoke/{champion.version}"
    assert f"registered as models:/smoke/{champion.version} (alias champion)" in output
    assert list((work / "ray_results" / "smoke").glob("final-*/checkpoint_*")), "Ray Train's checkpoints beside the sweep's"


@pytest.mark.slow
def test_the_final_run_is_no_trial_of_the_sweep(finalized):
    """The report (and a resumed sweep) see the six trials, not the final run among the parent's children."""
    work, _ = finalized
    sweep, _ = from_tracker(open_tracker(store_uri(work)), "smoke", "smoke")
    assert len(sweep.trials) == 6 and all(t.name.startswith("trial ") for t in sweep.trials)


@pytest.mark.slow
def test_sample_writes_16_pngs_and_an_npz_from_the_champion(finalized, tmp_path):
    work, _ = finalized
    cmd = [sys.executable, "-m", "sweep.sample", "models:/smoke@champion", "--num", "16", "--out", str(tmp_path / "s"),
           "--tracking-uri", store_uri(work), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "s").glob("*.png"))) == 16
    array = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert array.shape == (16, 8, 8, 3) and array.dtype == np.uint8


@pytest.mark.slow
def test_finalize_again_with_more_steps_continues_the_same_run(finalized):
    """The same command with a larger budget restores every worker from Ray Train's latest checkpoint and trains on
    in the same MLflow run (what an interrupted finalize does too); the champion is the best model so far."""
    work, _ = finalized
    proc = finalize(work, "--steps", "120", "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, _, (final,) = final_runs(work)
    assert final.data.tags["restored_at_step"] == "60" and final.data.tags["final.steps"] == "120"
    assert final.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(final.info.run_id, "fid")] == [60, 120]
    champion = client.get_model_version_by_alias("smoke", CHAMPION)
    best_step = min(client.get_metric_history(final.info.run_id, "fid"), key=lambda m: m.value).step
    assert champion.run_id == final.info.run_id and champion.tags["step"] == str(best_step)


@pytest.mark.slow
def test_register_trial_and_bad_budgets(finalized):
    work, _ = finalized
    client, parent, _ = final_runs(work)
    best = parent.data.tags["best_run_id"]
    proc = finalize(work, "--register-trial", best)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = proc.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    registered = client.get_model_version("smoke", version)
    assert registered.run_id == best and registered.tags["role"] == "trial" and registered.aliases == []
    bad = finalize(work, "--workers", "3")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --workers 3: train.batch_size 32 does not split into 3 equal shards; choose a divisor of it")
    missing = finalize(work, "--experiment", "nothing")
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error: no sweep 'smoke': no MLflow experiment 'nothing'")
