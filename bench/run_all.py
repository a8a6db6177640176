"""Run every benchmark and write BENCHMARKS.md.

    OMP_NUM_THREADS=2 python -m bench.run_all --quick            # small counts, minutes on a CPU
    python -m bench.run_all --out BENCHMARKS.md --json-dir bench/results

Each benchmark runs in its own process (``python -m bench.bench_train``, ``bench_train_options``,
``bench_sampling``, ``bench_eval``, ``bench_no_retrain``, ``bench_sweep_efficiency``, ``bench_overhead``, and
``python bench/bench_fid_features.py``) and writes JSON; this script collects the JSON and writes the whole
of BENCHMARKS.md (nothing in it is hand-edited: rerun to update), ratios ours/peer next to their targets,
the exact command that reproduces each figure, and a note for every figure that is not measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"train": 1.2, "sampling": 1.0, "fid": 1.0}  # ours/peer throughput, at least
CEILINGS = {"efficiency": 1 / 3, "overhead": 0.10}  # fractions, at most
PACKAGES = ("torch", "diffusers", "pytorch-fid", "ray", "optuna", "mlflow")


def plan(quick: bool, cuda: bool, device: str) -> dict[str, tuple[str, list[str]]]:
    """benchmark -> (how it is launched, its arguments) for this mode and device."""
    dev = ["--device", device]
    if cuda:
        train = ["--preset", "cifar"] + (["--steps", "10", "--repeats", "5"] if quick else [])
        sampling = ["--preset", "cifar", "--batch-size", "128"] + (["--repeats", "3"] if quick else [])
        fid = ["--num-images", "500" if quick else "2000", "--batch-size", "50"]
        evaluation = ["--num-samples", "1000" if quick else "10000", "--reference-images", "1000" if quick else "10000"]
        no_retrain = ["--steps", "300" if quick else "2000", "--num-samples", "256" if quick else "1000"]
    else:
        # quick: cpu-preset network at half its batch, and 2-image sampling calls, so that a run fits in
        # minutes on a shared 2-core machine with enough repetitions to take a median over.
        train = ["--preset", "cpu"] + (["--batch-size", "8", "--steps", "1", "--repeats", "9", "--warmup", "1"] if quick else [])
        sampling = ["--preset", "cpu"] + (["--batch-size", "2", "--repeats", "5", "--no-floor"] if quick
                                          else ["--batch-size", "8", "--repeats", "9"])
        fid = ["--num-images", "32" if quick else "2000", "--batch-size", "16" if quick else "50"]
        evaluation = ["--num-samples", "64" if quick else "10000", "--reference-images", "64" if quick else "2000"]
        no_retrain = ["--steps", "100", "--num-samples", "16", "--study-trials", "2"] if quick else []
    options = (["--steps", "1", "--repeats", "3", "--warmup", "1"] + ([] if cuda else ["--batch-size", "8"])) if quick else []
    # The sweep-level benchmarks train digits-size models on CPU workers whatever the device.
    efficiency = ["--random-trials", "3", "--asha-trials", "4", "--max-steps", "100", "--grace", "50"] if quick else []
    return {
        "train": ("-m bench.bench_train", train + dev),
        "options": ("-m bench.bench_train_options", options + dev),
        "sampling": ("-m bench.bench_sampling", sampling + dev),
        "fid": ("bench/bench_fid_features.py", fid + dev),
        "eval": ("-m bench.bench_eval", evaluation + dev),
        "no_retrain": ("-m bench.bench_no_retrain", no_retrain),
        "efficiency": ("-m bench.bench_sweep_efficiency", efficiency),
        "overhead": ("-m bench.bench_overhead", []),
    }


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_one(launch: str, args: list[str], json_path: Path, env: dict[str, str]) -> tuple[dict[str, Any] | None, str, float]:
    cmd = [sys.executable, *launch.split(), *args, "--out", str(json_path)]
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    noise = ("Warning", "warnings.warn", "USDT:", "ERROR:", "gpuGetDeviceCount")
    shown = [line for line in (proc.stdout + proc.stderr).splitlines() if not any(n in line for n in noise)]
    print("\n".join(shown[-12:]), flush=True)
    if proc.returncode != 0 or not json_path.is_file():
        return None, f"exit status {proc.returncode}:\n" + "\n".join(shown[-20:]), seconds
    return json.loads(json_path.read_text()), "", seconds


# ----------------------------------------------------------------------------------------------- report


def status(ratio: float, target: float, paired: list[float] | None = None) -> str:
    verdict = "meets target" if ratio >= target else "**BELOW TARGET**"
    if paired and min(paired) <= target <= max(paired):
        verdict += " (inconclusive: the per-repetition ratios span the target)"
    return verdict


def ceiling_status(value: float | None, ceiling: float) -> str:
    """Verdict for a figure that must stay at or below ``ceiling`` (None: the figure was never reached)."""
    return "meets target" if value is not None and value <= ceiling else "**ABOVE TARGET**"


def command(launch: str, args: list[str], threads: str) -> str:
    return " ".join(filter(None, [f"OMP_NUM_THREADS={threads} python {launch}", shlex.join(args), "--out RESULT.json"]))


def reproduce(cmd: str) -> list[str]:
    return ["", f"Reproduce: `{cmd}`", ""]


def section_train(r: dict[str, Any], cmd: str) -> list[str]:
    target = TARGETS["train"]
    pr = r["paired_ratios"]
    c = r["config"]
    mfu = ("n/a (CPU: no peak FLOP/s defined)" if r["mfu_ours"] is None
           else f"{100 * r['mfu_ours']:.1f}% / {100 * r['mfu_diffusers']:.1f}% of {r['peak_flops'] / 1e12:.0f} TFLOP/s ({r['peak_source']})")
    lines = [
        "## Training-step throughput (our UNet + diffusion_loss vs diffusers UNet2DModel)",
        "",
        "| | ours | diffusers | ours/diffusers | target | status |",
        "|---|---|---|---|---|---|",
        f"| img/s (median of {r['repeats']} interleaved repetitions x {r['steps_per_repeat']} steps; ratio = median of per-repetition ratios) | "
        f"{r['ours_img_per_s']:.2f} | {r['diffusers_img_per_s']:.2f} | **{r['ratio']:.2f}x** | >= {target}x | "
        f"{status(r['ratio'], target, pr)} |",
        *([f"| img/s, diffusers stepped by our fused AdamW too (the network + objective alone) | {r['ours_img_per_s']:.2f} | "
           f"{r['diffusers_fused_adamw_img_per_s']:.2f} | **{r['ratio_same_optimizer']:.2f}x** | | |"]
          if "ratio_same_optimizer" in r else []),
        f"| parameters | {r['params_ours']:,} | {r['params_diffusers']:,} | {r['params_ours'] / r['params_diffusers']:.4f} | within +-10% | "
        f"{'ok' if abs(r['params_diffusers'] / r['params_ours'] - 1) <= 0.1 else 'MISMATCH'} |",
        f"| GFLOP per fwd+bwd step | {r['flops_per_step_ours'] / 1e9:.1f} | {r['flops_per_step_diffusers'] / 1e9:.1f} | | | |",
        f"| achieved TFLOP/s | {r['achieved_flops_ours'] / 1e12:.3f} | {r['achieved_flops_diffusers'] / 1e12:.3f} | | | |",
        "",
        f"- Device: {r['device']}, {r['precision']}; model {c['channels']}x{c['image_size']}x{c['image_size']}, "
        f"base {c['base_channels']}, mult {c['channel_mult']}, {c['num_res_blocks']} res blocks, attention at {c['attention_resolutions']}, "
        f"{c['num_heads']} heads, dropout {c['dropout']}, batch {c['batch_size']}; AdamW lr 2e-4, grad-clip 1.0, {r['warmup_steps']} warm-up steps. "
        "Ours steps the trainer's optimizer (fused AdamW, `diffusion_core.trainer.build_optimizer`); diffusers' its training "
        "example's `torch.optim.AdamW` with PyTorch's default implementation.",
        f"- diffusers: `UNet2DModel(block_out_channels={tuple(r['diffusers_config']['block_out_channels'])}, "
        f"layers_per_block={r['diffusers_config']['layers_per_block']}, down={tuple(r['diffusers_config']['down_block_types'])}, "
        f"attention_head_dim={r['diffusers_config']['attention_head_dim']}, resnet_time_scale_shift='scale_shift')`.",
        f"- Per-repetition ratios ours/diffusers (each pair adjacent in time): {', '.join(f'{x:.2f}' for x in pr)}; "
        f"ratio of the two medians {r['ratio_of_medians']:.2f}.",
        f"- MFU (ours / diffusers): {mfu}.",
    ]
    for name, key in (("ours", "profile_ours"), ("diffusers", "profile_diffusers")):
        p = r[key]
        kern = ", ".join(f"`{k}`" for k in p["attention_kernels"]) or "none"
        top = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in p["top_ops"][:5])
        lines.append(f"- Profile of one step, {name}: attention kernels {kern}"
                     f"{' (**unfused math fallback**)' if p['attention_math_fallback'] else ''}; top ops by {p['time_kind']}: {top}.")
    notes = ["- Both sides have the same architecture (same widths, blocks, attention levels, scale-shift conditioning) "
             "and the same FLOPs, so the ratio reflects implementation differences only: our dropout mask (16-bit uniform "
             "integers, four per 64-bit draw, instead of `bernoulli_`) and the fused AdamW. Convolutions, which no eager "
             "PyTorch code can make cheaper at equal work, take most of a CPU step (the profiles above)."]
    if "paired_ratios_same_optimizer" in r:
        notes.append("- Per-repetition ratios against diffusers stepped by our fused AdamW: "
                     + ", ".join(f"{x:.2f}" for x in r["paired_ratios_same_optimizer"]) + ".")
    if r["profile_ours"]["attention_math_fallback"] and not r["profile_diffusers"]["attention_math_fallback"]:
        notes.append("- Our `AttentionBlock` runs the unfused math SDPA kernel while diffusers' runs a fused one: the q/k/v "
                     "views passed to `F.scaled_dot_product_attention` have a non-unit stride in the last dimension, which every "
                     "fused kernel rejects (fix: `.contiguous()` after the transpose in `AttentionBlock.forward`).")
    if r["device_type"] == "cpu":
        notes.append("- CPU figures on a shared machine: see the per-repetition range above for the noise level.")
    return lines + notes + reproduce(cmd)


def section_options(r: dict[str, Any], cmd: str) -> list[str]:
    """Each training-path option against the defaults: kept (on by default) only where it helps."""
    lines = [
        "## Training-path options (each against the defaults, same run)",
        "",
        "| option | on by default | img/s | speed vs defaults (median of per-repetition ratios) | warm-up s | verdict |",
        "|---|---|---|---|---|---|",
        f"| defaults | | {r['default_img_per_s']:.2f} | 1.00x | {r['default_warmup_seconds']:.1f} | |",
    ]
    for v in r["variants"]:
        ratio = v["ratio_vs_default"]
        spans = min(v["paired_ratios"]) <= 1.0 <= max(v["paired_ratios"])
        if v["on_by_default"]:
            verdict = ("default kept: turning it off is slower" if ratio < 1.0 else "**turning it off is not slower here**")
        else:
            verdict = ("helps: a candidate default" if ratio >= 1.05 and not spans else "no gain here: stays off")
        lines.append(f"| {v['what']} | {'yes (row = turned off)' if v['on_by_default'] else 'no'} | {v['img_per_s']:.2f} | "
                     f"**{ratio:.2f}x** (range {min(v['paired_ratios']):.2f}-{max(v['paired_ratios']):.2f}) | "
                     f"{v['warmup_seconds']:.1f} | {verdict} |")
    p = r["preset"]
    lines += [
        "",
        f"- Device: {r['device']}; the real `Trainer.train_step` (batch from the dataset, loss, backward, clip, AdamW, EMA) "
        f"of a {p['base_channels']}-channel U-Net at {p['image_size']}x{p['image_size']}, batch {p['batch_size']}; "
        f"{r['repeats']} interleaved repetitions of {r['steps_per_repeat']} steps after {r['warmup_steps']} warm-up steps "
        "(compilation happens in the warm-up).",
    ]
    if r["device_type"] == "cpu":
        lines.append("- CPU only: bf16 autocast and the on-device dataset are CUDA options and are measured by this "
                     "benchmark on a GPU.")
    return lines + reproduce(cmd)


def section_sampling(r: dict[str, Any], cmd: str) -> list[str]:
    target = TARGETS["sampling"]
    pr = r["paired_ratios"]
    o = r.get("null_network_overhead")
    lines = [
        "## DDIM sampling throughput (diffusion_core.samplers.sample vs diffusers DDIMScheduler, same network)",
        "",
        "| | ours | diffusers | ours/diffusers | target | status |",
        "|---|---|---|---|---|---|",
        f"| img/s, {r['sampler']} (median of {r['repeats']}; ratio = median of per-repetition ratios) | {r['ours_img_per_s']:.3f} | {r['diffusers_img_per_s']:.3f} | "
        f"**{r['ratio']:.2f}x** | >= {target}x | {status(r['ratio'], target, pr)} |",
    ]
    if o:
        lines.append(f"| sampler overhead with a null network, us/step (lower is better) | {o['ours_us_per_step']:.0f} | "
                     f"{o['diffusers_us_per_step']:.0f} | {o['ratio']:.2f}x (speed) | >= {target}x | {status(o['ratio'], target)} |")
    lines += [
        "",
        f"- Device: {r['device']}, {r['precision']}; our UNet ({r['params']:,} parameters, zero-initialised "
        f"layers re-randomised) for both; batch {r['config']['batch_size']}; same x_T.",
        f"- Max |ours - diffusers| over the final samples: {r['max_abs_diff']:.1e} (same leading timesteps; diffusers keeps ᾱ in "
        "float32, ours in float64).",
        (f"- Network alone, 50 calls: {r['network_only_img_per_s']:.3f} img/s - the ceiling for both samplers."
         if r.get("network_only_img_per_s") else "- Network-alone floor not timed in this mode (`--no-floor`)."),
        f"- Per-repetition ratios ours/diffusers: {', '.join(f'{x:.2f}' for x in pr)}; ratio of the two medians {r['ratio_of_medians']:.2f}.",
        "- The network is the same on both sides, so the full-sampler ratio can differ from 1.0 only by the samplers' own "
        "per-step work (the null-network row), which is small next to a UNet forward; the rest is machine noise.",
    ]
    if o:
        lines.append(
            "- Per step, our DDIM computes its coefficients as Python floats from a host copy of the ᾱ table (every sample "
            "in a sampling batch shares its step), so the step itself is a handful of full-tensor ops (x̂_0 = (x_t - √(1-ᾱ_t) "
            "ε̂)/√ᾱ_t, x_{t-1} = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂) and no coefficient costs a kernel launch or a device sync; "
            "diffusers' `DDIMScheduler.step` does the same arithmetic on 0-dim tensors.")
    lines += reproduce(cmd)
    return lines


def section_fid(r: dict[str, Any], cmd: str) -> list[str]:
    target = TARGETS["fid"]
    return [
        "## FID feature extraction (InceptionFeatures vs pytorch-fid's get_activations loop)",
        "",
        "| | ours | pytorch-fid | ours/pytorch-fid | target | status |",
        "|---|---|---|---|---|---|",
        f"| img/s ({r['num_images']} images, batch {r['batch_size']}, interleaved chunks of {r['chunk']}) | "
        f"{r['ours_img_per_s']:.2f} | {r['pytorch_fid_img_per_s']:.2f} | **{r['ratio']:.2f}x** | >= {target}x | "
        f"{status(r['ratio'], target, r['paired_ratios'])} |",
        "",
        f"- Device: {r['device']}; images {r['image_shape']}, upsampled to 299x299 by both; max |feature diff| {r['max_abs_feature_diff']:.1e}.",
        f"- Ours: {r['ours']}.",
        f"- Peer: {r['pytorch_fid']}.",
        "- Per-chunk ratios ours/pytorch-fid (each pair adjacent in time): "
        + ", ".join(f"{x:.2f}" for x in r["paired_ratios"]) + "; the headline ratio is their median, img/s are totals.",
    ] + reproduce(cmd)


def section_eval(r: dict[str, Any], cmd: str) -> list[str]:
    """Absolute cost of one rung's evaluation (no peer: it is the price ASHA pays per rung)."""
    n = r["num_samples"]
    return [
        f"## The price of a rung: {n:,}-sample FID/KID evaluation",
        "",
        "| | wall s | CPU s (user+sys) | samples/s |",
        "|---|---|---|---|",
        f"| one-off reference statistics ({r['reference_images']:,} real images, then cached) | {r['reference_seconds']:.0f} | "
        f"{r['reference_cpu_seconds']:.0f} | |",
        f"| evaluation at a rung: generate {n:,} + Inception + FID/KID | {r['eval_seconds']:.0f} | {r['eval_cpu_seconds']:.0f} | "
        f"{r['samples_per_s']:.2f} |",
        f"| of which sampling ({r['sampler']}, batch {r['batch_size']}) | {r['sampling_seconds']:.0f} | | |",
        "",
        f"- Device: {r['device']}; {r['model_parameters']:,}-parameter U-Net on MNIST {r['image_shape']} (untrained: the time "
        "does not depend on the weights). Peak resident memory of the whole process: "
        f"**{r['peak_rss_mib']:,.0f} MiB** for N = {n:,} (features are kept as N x 2048 float64 = {n * 2048 * 8 / 2**20:,.0f} MiB).",
        "- Wall time depends on what else the machine ran (see the load average above); CPU time divided by the thread count "
        "is the unloaded estimate.",
        f"- {r['weights']}.",
    ] + reproduce(cmd)


def section_no_retrain(r: dict[str, Any], cmd: str) -> list[str]:
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
        f"{r['bank_seconds']:.0f} s | rate {r['best_rate_separate']:g} ({k} trainings, one `ema_decay` each) | "
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
    ] + reproduce(cmd)


def section_efficiency(r: dict[str, Any], cmd: str) -> list[str]:
    """ASHA + TPE against a full-budget random search of the same space, both through sweep.launch."""
    ceiling = CEILINGS["efficiency"]
    rnd, asha, hit = r["random"], r["asha"], r["reached"]
    lines = [
        "## Sweep efficiency (ASHA + TPE vs full-budget random search)",
        "",
        f"Small real problem: scikit-learn digits, a smoke-size U-Net; six dimensions (heads, dropout, schedule, T, LR, EMA "
        f"rate); FID on {r['space']['eval']['num_samples']} samples every {r['grace']} steps, up to {r['max_steps']} steps; "
        f"ASHA grace {r['grace']}, reduction factor {r['reduction_factor']:g}; two trials at a time on CPU workers.",
        "",
        "| sweep | trials | trial-steps | in-trial s | wall s | best FID |",
        "|---|---|---|---|---|---|",
        f"| random search, every trial to {r['max_steps']} steps (`search: random`, `scheduler: fifo`) | {rnd['trials']} | "
        f"{rnd['trial_steps']:,} | {rnd['work_seconds']:.0f} | {rnd['wall_seconds']:.0f} | {rnd['best_fid']:.2f} |",
        f"| ASHA + TPE, whole sweep | {asha['trials']} | {asha['trial_steps']:,} | {asha['work_seconds']:.0f} | "
        f"{asha['wall_seconds']:.0f} | {asha['best_fid']:.2f} |",
    ]
    if hit is None:
        lines += ["", f"**ASHA + TPE did not come within {100 * r['tolerance']:.0f}% of the random search's best FID "
                  f"({r['target_fid']:.2f}) in this run**; its whole sweep cost {r['asha_total_steps_ratio']:.2f}x the random "
                  "search's trial-steps."]
    else:
        verdict = ceiling_status(r["steps_ratio"], ceiling)
        lines += [
            f"| ASHA + TPE, until its first FID <= {r['target_fid']:.2f} (random's best + {100 * r['tolerance']:.0f}%) | | "
            f"{hit['steps']:,} | {hit['work_seconds']:.0f} | {hit['wall_seconds']:.0f} | {hit['fid']:.2f} |",
            "",
            f"- Compute to reach it, as a fraction of the random search's: **{r['steps_ratio']:.2f}** of the trial-steps "
            f"(target <= {ceiling:.2f}: {verdict}), {r['work_ratio']:.2f} of the in-trial time, {r['wall_ratio']:.2f} of the "
            "wall time (both sweeps' wall time includes starting Ray and the launcher's own work).",
            f"- Reached by trial {hit['trial_id']} at step {hit['step']}; the whole ASHA sweep cost {r['asha_total_steps_ratio']:.2f}x "
            "the random search's trial-steps.",
        ]
    if "full_budget_trials" in asha:
        lines.append(f"- ASHA let {asha['full_budget_trials']} of its {asha['trials']} trials run to {r['max_steps']} steps "
                     f"(random search: all {rnd['trials']}). Asynchronous ASHA promotes a trial when it is in the top "
                     f"1/{r['reduction_factor']:g} of the results recorded at its rung so far, so the first trials to reach "
                     "a rung, with little competition there, go on: with few trials per rung it prunes little.")
    sizes = r.get("by_random_search_size", [])
    if sizes:
        lines += [
            "",
            "The same figure against a random search of its first k trials (random trials are independent draws, so these "
            "are random searches of k trials; a larger one finds a better FID, a harder target, at a proportionally higher cost):",
            "",
            f"| random search trials | its trial-steps | its best FID | ASHA + TPE trial-steps to within {100 * r['tolerance']:.0f}% | ratio |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {row['random_trials']} | {row['random_steps']:,} | {row['best_fid']:.2f} | "
                  + (f"{row['asha_steps']:,} | {row['steps_ratio']:.2f} |" if row["asha_steps"] is not None else "not reached | - |")
                  for row in sizes]
        lines.append("")
    lines += [
        "- One seed of each sweep (FID on 64 samples is noisy at the 5% level): read the figure as an order of magnitude, "
        "and rerun with `--seed` for more.",
    ] + reproduce(cmd)
    return lines


def section_overhead(r: dict[str, Any], cmd: str) -> list[str]:
    ceiling = CEILINGS["overhead"]
    verdict = ceiling_status(r["overhead_fraction"], ceiling)
    between = r["overhead_seconds"] - r["before_first_trial_seconds"] - r["after_last_report_seconds"]
    return [
        "## Orchestration overhead (smoke sweep)",
        "",
        "| | seconds | share of wall |",
        "|---|---|---|",
        f"| wall time of `python -m sweep.launch {r['space']}` (one trial at a time) | {r['wall_seconds']:.0f} | 100% |",
        f"| training + evaluation inside the {r['trials']} trials ({r['trial_steps']:,} steps, {r['reports']} reports) | "
        f"{r['work_seconds']:.0f} | {100 * r['work_seconds'] / r['wall_seconds']:.0f}% |",
        f"| **overhead** (target <= {100 * ceiling:.0f}%: {verdict}) | {r['overhead_seconds']:.1f} | "
        f"**{100 * r['overhead_fraction']:.1f}%** |",
        f"| of which before the first trial trained (validation, preflight, Ray start, first trial's setup) | "
        f"{r['before_first_trial_seconds']:.0f} | {100 * r['before_first_trial_seconds'] / r['wall_seconds']:.0f}% |",
        f"| of which after the last report (Ray shutdown, summary, report, the best trial's interpolation grids) | "
        f"{r['after_last_report_seconds']:.0f} | {100 * r['after_last_report_seconds'] / r['wall_seconds']:.0f}% |",
        f"| of which between trials and reports (a trial's start in a reused worker process: Trainer, MLflow run; "
        f"checkpoints, MLflow logging, Ray's bookkeeping) | {between:.0f} | {100 * between / r['wall_seconds']:.0f}% |",
        "",
        "- Trials run in reused worker processes (`reuse_actors`): only the first trial pays for starting a process and "
        "importing PyTorch, Ray and MLflow (~10 s on 2 cores). The reference statistics are computed before the timed run "
        "(a sweep computes them once and caches them).",
        "- The driver opens MLflow's store while Ray starts, stops Ray while it writes the sweep up (`sweep.runner.run_sweep`), "
        "and exits without the interpreter's final garbage collection (`gc.freeze` in `sweep.launch`).",
        "- A smoke trial trains for seconds, so fixed costs weigh far more here than in a real sweep, whose trials train for "
        "hours: the fraction is an upper bound for real use.",
    ] + reproduce(cmd)


def failed_section(title: str, error: str, cmd: str) -> list[str]:
    return [f"## {title}", "", "**Not measured in this run:**", "", "```", error.strip(), "```"] + reproduce(cmd)


def missing_sections(cuda: bool, device: str, train: dict[str, Any] | None) -> list[str]:
    if cuda and train is not None and train.get("mfu_ours") is not None:
        gpu = (f"- Training MFU on {device} is in the training table above. The `search_spaces/mnist.yaml` sweep on GPU "
               "is not measured by this script: run `python -m sweep.launch search_spaces/mnist.yaml` there.")
    else:
        gpu = (f"- Not measured: no GPU was available to this run (device: {device}; in the session that generated this "
               "file no GPU machine was lent), and the figures must not be estimated from CPU numbers. Training MFU needs "
               "`python -m bench.run_all` on a CUDA machine (it then reports MFU = achieved FLOP/s / peak dense bf16 FLOP/s); "
               "the `search_spaces/mnist.yaml` sweep on a GPU is run with `python -m sweep.launch search_spaces/mnist.yaml` there.")
    return [
        "## Not measured yet",
        "",
        "### GPU (MFU, mnist.yaml sweep)",
        "",
        gpu,
        "",
    ]


def write_report(out: Path, meta: dict[str, Any], results: dict[str, Any], errors: dict[str, str],
                 commands: dict[str, str]) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['invocation']}`; the whole file is rewritten on every run (do not edit by hand).",
        "Ratios are ours/peer throughput: above 1.0 means diffusion-sweep is faster. For training and sampling the ratio is "
        "the median over repetitions of ours/peer timed back to back (interleaved, so machine-load drift cancels); "
        "img/s are the medians of each side.",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        f"| date | {meta['date']} |",
        f"| device | {meta['device']} |",
        f"| threads | {meta['threads']} |",
        f"| mode | {meta['mode']} |",
        f"| load average (1/5/15 min) at start / end | {meta['load_start']} / {meta['load_end']} on {meta['cores']} cores |",
        f"| wall time of this run | {meta['seconds']:.0f} s |",
        "| versions | " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + " |",
        "",
    ]
    if meta["reused"]:
        lines += [f"Results of {', '.join(meta['reused'])} were measured by earlier runs of this command and taken from "
                  "their JSON (`--reuse-json`); the load average and wall time above are of the run that assembled this file. "
                  "Each section's per-repetition ratios show the noise its own run saw.", ""]
    if not meta["cuda"]:
        lines += [
            f"CPU run ({meta['cores']} cores): absolute img/s depend on what else the machine ran at the time (see the load "
            "average) and are not comparable between runs; compare the ratios, and read each one next to its per-repetition "
            "spread below. No GPU figures are given anywhere in this file.",
            "",
        ]
    lines += [
        "## Summary",
        "",
        "| benchmark | ours | peer | ours/peer | target | status |",
        "|---|---|---|---|---|---|",
    ]
    rows = {
        "train": ("training step, img/s", "ours_img_per_s", "diffusers_img_per_s", "diffusers UNet2DModel"),
        "sampling": ("DDIM 50-step sampling, img/s", "ours_img_per_s", "diffusers_img_per_s", "diffusers DDIMScheduler"),
        "fid": ("FID Inception features, img/s", "ours_img_per_s", "pytorch_fid_img_per_s", "pytorch-fid"),
    }
    for name, (label, k_ours, k_peer, peer) in rows.items():
        r = results.get(name)
        if r is None:
            lines.append(f"| {label} | - | - | not measured | >= {TARGETS[name]}x | see below |")
            continue
        lines.append(f"| {label} | {r[k_ours]:.3g} | {r[k_peer]:.3g} ({peer}) | **{r['ratio']:.2f}x** | >= {TARGETS[name]}x | "
                     f"{status(r['ratio'], TARGETS[name], r.get('paired_ratios'))} |")
    if "eval" in results:
        r = results["eval"]
        lines.append(f"| FID/KID evaluation of {r['num_samples']:,} samples, s | {r['eval_seconds']:.0f} wall, "
                     f"{r['eval_cpu_seconds']:.0f} CPU | - | - | - | measured (no peer) |")
    if "efficiency" in results:
        r = results["efficiency"]
        ratio = f"**{r['steps_ratio']:.2f}**" if r["steps_ratio"] is not None else "not reached"
        lines.append(f"| trial-steps for ASHA + TPE to reach random search's best FID +{100 * r['tolerance']:.0f}% | "
                     f"{r['reached']['steps'] if r['reached'] else '-'} | {r['random']['trial_steps']} (full-budget random search, {r['random']['trials']} trials) | "
                     f"{ratio} | <= {CEILINGS['efficiency']:.2f} | {ceiling_status(r['steps_ratio'], CEILINGS['efficiency'])} |")
    if "overhead" in results:
        r = results["overhead"]
        lines.append(f"| orchestration overhead of the smoke sweep, s | {r['overhead_seconds']:.1f} of {r['wall_seconds']:.0f} wall | "
                     f"{r['work_seconds']:.0f} in trials | **{100 * r['overhead_fraction']:.1f}%** | <= {100 * CEILINGS['overhead']:.0f}% | "
                     f"{ceiling_status(r['overhead_fraction'], CEILINGS['overhead'])} |")
    lines.append("")
    builders = {"train": section_train, "options": section_options, "sampling": section_sampling, "fid": section_fid, "eval": section_eval,
                "no_retrain": section_no_retrain, "efficiency": section_efficiency, "overhead": section_overhead}
    titles = {"train": "Training-step throughput", "options": "Training-path options", "sampling": "DDIM sampling throughput", "fid": "FID feature extraction",
              "eval": "The price of a rung: FID/KID evaluation", "no_retrain": "Searching without retraining",
              "efficiency": "Sweep efficiency (ASHA + TPE vs full-budget random search)", "overhead": "Orchestration overhead"}
    for name, build in builders.items():
        if name in results:
            lines += build(results[name], commands[name])
        else:
            lines += failed_section(titles[name], errors.get(name, "not run"), commands[name])
    lines += missing_sections(meta["cuda"], meta["device"], results.get("train"))
    out.write_text("\n".join(lines).rstrip() + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: minutes on a CPU")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--json-dir", type=Path, default=None, help="keep each benchmark's JSON here (default: a temporary folder)")
    p.add_argument("--reuse-json", action="store_true",
                   help="take a benchmark's result from --json-dir when its JSON is already there (resume a long run); "
                        "with --only, the named benchmarks run anew and the others are taken from their JSON")
    p.add_argument("--only", nargs="*", choices=tuple(plan(quick=False, cuda=False, device="cpu")), default=None,
                   help="run only these benchmarks (the others are left out of the report, or reused with --reuse-json)")
    args = p.parse_args()

    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = torch.cuda.get_device_name(torch.device(args.device if args.device != "auto" else "cuda")) if cuda else cpu_model()
    threads = os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    json_dir = args.json_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    json_dir.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), load_average()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    commands: dict[str, str] = {}
    reused: list[str] = []
    for name, (launch, bench_args) in plan(args.quick, cuda, args.device).items():
        commands[name] = command(launch, bench_args, threads)
        json_path = json_dir / f"{name}.json"
        chosen = not args.only or name in args.only
        if args.reuse_json and json_path.is_file() and not (args.only and chosen):
            results[name] = json.loads(json_path.read_text())
            reused.append(name)
            print(f"[{name}: reused {json_path}]", flush=True)
            continue
        if not chosen:
            errors[name] = "skipped (--only)"
            continue
        result, error, seconds = run_one(launch, bench_args, json_path, env)
        print(f"[{name}: {seconds:.0f} s]", flush=True)
        if result is None:
            errors[name] = error
        else:
            results[name] = result

    invocation = f"OMP_NUM_THREADS={threads} python -m bench.run_all" + (" --quick" if args.quick else "")
    if args.device != "auto":
        invocation += f" --device {args.device}"
    meta = {
        "invocation": invocation,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "device": device if cuda else f"{device} (CPU; no GPU)",
        "threads": f"{threads} (OMP_NUM_THREADS; torch.get_num_threads() in each benchmark: "
                   + ", ".join(f"{k} {v['threads']}" for k, v in results.items() if "threads" in v) + ")",
        "mode": "quick (small counts)" if args.quick else "full",
        "load_start": load_start,
        "load_end": load_average(),
        "seconds": time.perf_counter() - start,
        "versions": versions(),
        "cuda": cuda,
        "reused": reused,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    write_report(args.out, meta, results, errors, commands)
    print(f"wrote {args.out} (JSON in {json_dir})")
    if errors and not args.only:
        sys.exit(1)


if __name__ == "__main__":
    main()
