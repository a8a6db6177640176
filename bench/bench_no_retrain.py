"""What searching without retraining saves, on a small real problem (scikit-learn digits, a smoke-size U-Net).

1. EMA rate: one training with an EMA bank of K rates, every copy evaluated at the end, against the ordinary
   way, K trainings each with one EMA rate (what an Optuna dimension costs). Both find the best rate; the
   EMA weights are identical by construction, so the FIDs must agree exactly, and the saving is in compute.
2. Sampler settings: a sampling study of M configurations on the trained checkpoint, against M trainings
   (what declaring the sampler as a training dimension costs), priced at the measured cost of one training
   plus its evaluation.

    python -m bench.bench_no_retrain --steps 600 --out bench_no_retrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._benchmark import Args, Benchmark, Result
from bench._common import write_result
from diffusion_core.config import RunConfig
from diffusion_core.evaluate import Evaluator, evaluate_bank
from diffusion_core.trainer import Trainer
from sweep.config import parse_sweep
from sweep.sampling_study import run_sampling_study

RATES = (0.99, 0.9, 0.999)
SEARCH = {"sampler": {"choice": ["ddim", "ddpm"]}, "sampling_steps": {"int": [10, 50]},
          "eta": {"uniform": [0.0, 1.0], "if": {"eval.sampler": "ddim"}}}


def run_config(args: argparse.Namespace, cache_dir: str, ema_rates: list[float]) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"dataset": "digits"},
        "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "num_heads": 2},
        "diffusion": {"schedule": "cosine", "timesteps": 200},
        "train": {"batch_size": 32, "lr": 1e-3, "warmup_steps": 20, "max_steps": args.steps, "ema_rates": ema_rates},
        "eval": {"num_samples": args.num_samples, "batch_size": args.num_samples, "sampler": "ddim", "sampling_steps": 20,
                 "reference_images": 512, "kid_subset_size": min(64, args.num_samples), "inception_weights": args.weights,
                 "cache_dir": cache_dir},
    })


def train_and_evaluate(cfg: RunConfig, evaluator: Evaluator) -> tuple[Trainer, dict[float, float], float, float]:
    """Train ``cfg`` to its last step and evaluate every EMA it keeps: (trainer, FID per rate, train s, eval s)."""
    start = time.perf_counter()
    trainer = Trainer(cfg, device="cpu")
    trainer.train_until(cfg.train.max_steps)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bank = evaluate_bank(evaluator, trainer.emas.models(), trainer.schedule)
    return trainer, {rate: r.fid for rate, r in bank.results.items()}, train_seconds, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of each training")
    p.add_argument("--num-samples", type=int, default=64, help="samples per evaluation")
    p.add_argument("--study-trials", type=int, default=4, help="sampling configurations of the study")
    p.add_argument("--weights", default=None, help="FID Inception weights (default: resolve_inception_weights)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-no-retrain-") as cache_dir:
        bank_cfg = run_config(args, cache_dir, list(RATES))
        evaluator = Evaluator(bank_cfg, "cpu")
        evaluator.reference  # noqa: B018 - the reference is computed once, outside every timing
        bank_trainer, bank_fids, bank_train_s, bank_eval_s = train_and_evaluate(bank_cfg, evaluator)

        separate: dict[float, float] = {}
        separate_train_s = separate_eval_s = 0.0
        for rate in RATES:
            _, fids, train_s, eval_s = train_and_evaluate(run_config(args, cache_dir, [rate]), evaluator)
            separate[rate] = fids[rate]
            separate_train_s += train_s
            separate_eval_s += eval_s

        best_rate = min(bank_fids, key=bank_fids.get)
        sweep = parse_sweep({"name": "bench", **bank_cfg.model_dump(include={"data", "model", "diffusion", "train"}),
                             "eval": {**bank_cfg.eval.model_dump(), "search": {"trials": args.study_trials, **SEARCH}}})
        start = time.perf_counter()
        study = run_sampling_study(bank_trainer.emas.models()[best_rate], bank_trainer.schedule, bank_cfg,
                                   sweep.sampling_search, evaluator.features)
        study_s = time.perf_counter() - start

    one_training_s = (separate_train_s + separate_eval_s) / len(RATES)
    result: dict[str, Any] = {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "steps": args.steps,
        "num_samples": args.num_samples,
        "rates": list(RATES),
        "bank_fids": {f"{r:g}": f for r, f in bank_fids.items()},
        "separate_fids": {f"{r:g}": f for r, f in separate.items()},
        "fids_identical": all(bank_fids[r] == separate[r] for r in RATES),
        "best_rate_bank": best_rate,
        "best_rate_separate": min(separate, key=separate.get),
        "bank_train_steps": args.steps,
        "separate_train_steps": args.steps * len(RATES),
        "bank_seconds": bank_train_s + bank_eval_s,
        "bank_train_seconds": bank_train_s,
        "separate_seconds": separate_train_s + separate_eval_s,
        "separate_train_seconds": separate_train_s,
        "study_trials": args.study_trials,
        "study_seconds": study_s,
        "study_default_fid": study.default.fid,
        "study_best_fid": study.best.fid,
        "study_best": study.best_settings(bank_cfg),
        "retrain_equivalent_seconds": one_training_s * (args.study_trials + 1),
        "torch": torch.__version__,
        "threads_env": os.environ.get("OMP_NUM_THREADS", ""),
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)


def section(r: Result) -> list[str]:
    """EMA bank vs one training per rate, and a sampling study vs one training per sampling configuration."""
    k, m = len(r["rates"]), r["study_trials"]
    fids = ", ".join(f"{rate}: {fid:.2f}" for rate, fid in r["bank_fids"].items())
    settings = ", ".join(f"{key.removeprefix('eval.')}={value}" for key, value in r["study_best"].items())
    return [
        "## Searching without retraining (EMA bank, sampling study)",
        "",
        f"Small real problem: scikit-learn digits, a smoke-size U-Net, {r['steps']} training steps per training, "
        f"FID on {r['num_samples']} samples; {r['device']}.",
        "",
        "| search | found | compute | the ordinary way | compute | saving |",
        "|---|---|---|---|---|---|",
        f"| best of {k} EMA rates | rate {r['best_rate_bank']:g} (EMA bank, 1 training) | {r['bank_train_steps']:,} steps, "
        f"{r['bank_seconds']:.0f} s | rate {r['best_rate_separate']:g} ({k} trainings, one EMA rate each) | "
        f"{r['separate_train_steps']:,} steps, {r['separate_seconds']:.0f} s | **{r['separate_train_steps'] / r['bank_train_steps']:.1f}x** "
        f"fewer steps, **{r['separate_seconds'] / r['bank_seconds']:.1f}x** less time |",
        f"| best of {m} sampling configurations | FID {r['study_default_fid']:.2f} -> {r['study_best_fid']:.2f} (study on the "
        f"checkpoint) | 0 steps, {r['study_seconds']:.0f} s | {m + 1} trainings (a sampling dimension in the training search) | "
        f"{(m + 1) * r['steps']:,} steps, ~{r['retrain_equivalent_seconds']:.0f} s | **{r['retrain_equivalent_seconds'] / r['study_seconds']:.1f}x** less time |",
        "",
        f"- FID per EMA rate from the bank: {fids}; identical to the separate trainings' FIDs: **{r['fids_identical']}** "
        "(the bank's copies equal separately trained EMAs bit for bit, and evaluations use common random numbers).",
        f"- Best sampling settings found: {settings}.",
        "- The ordinary sampling-dimension cost is the measured mean cost of one training plus its evaluation above, times the "
        "configurations (the run's own settings plus the study's proposals).",
    ]


BENCHMARK = Benchmark(
    name="no_retrain",
    title="Searching without retraining",
    module="bench.bench_no_retrain",
    order=60,
    section=section,
    args=Args(quick="--steps 100 --num-samples 16 --study-trials 2", cuda_full="--steps 2000 --num-samples 1000",
              cuda_quick="--steps 300 --num-samples 256"),
    takes_device=False,
)


if __name__ == "__main__":
    main()
