"""The price of one ASHA rung at full size: a 10k-sample FID/KID evaluation with ``diffusion_core.evaluate``.

Times, separately, the one-off reference statistics (``--reference-images`` real MNIST test images, then
cached on disk) and the evaluation a trial pays at every rung: generate N samples with DDIM from the
network, Inception features of all N, FID and KID against the cached reference. Also records the
process's peak resident memory, so the "stays within memory for N up to 10k on CPU" claim is measured.
The network is an untrained smoke-size U-Net: the time does not depend on its weights (the FID value
is meaningless and not reported).

    python -m bench.bench_eval --num-samples 10000 --reference-images 2000 --out bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench._benchmark import Args, Benchmark, Result
from bench._common import resolve_device, write_result
from bench._markdown import row
from diffusion_core.config import RunConfig
from diffusion_core.evaluate import Evaluator
from diffusion_core.schedules import build_schedule
from diffusion_core.unet import build_unet

DEFAULT_DATA = Path(os.environ.get("DIFFUSION_SWEEP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def eval_config(args: argparse.Namespace, cache_dir: str) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"dataset": "mnist", "root": str(args.data_root), "download": False},
        "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [14], "num_heads": 2},
        "diffusion": {"schedule": "cosine", "timesteps": 1000},
        "eval": {"num_samples": args.num_samples, "batch_size": args.batch_size, "sampler": "ddim",
                 "sampling_steps": args.sampling_steps, "reference_images": args.reference_images,
                 "kid_subset_size": 1000, "inception_weights": args.weights, "cache_dir": cache_dir},
    })


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine it moves far less with load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--reference-images", type=int, default=2000)
    p.add_argument("--sampling-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding MNIST/raw (default: ../shared/data)")
    p.add_argument("--weights", default=None, help="FID Inception weights (default: resolve_inception_weights)")
    p.add_argument("--cache-dir", default=None, help="reference-statistics cache (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        cfg = eval_config(args, args.cache_dir or scratch)
        torch.manual_seed(0)
        model = build_unet(cfg).to(device)
        schedule = build_schedule(cfg.diffusion).to(device)
        evaluator = Evaluator(cfg, device)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        evaluator.reference  # noqa: B018 - computes and caches the reference statistics
        reference_seconds, reference_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        cpu_start = cpu_seconds()
        result = evaluator(model, schedule)
        eval_cpu = cpu_seconds() - cpu_start

    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "num_samples": args.num_samples,
        "reference_images": args.reference_images,
        "sampler": f"ddim, {args.sampling_steps} steps",
        "batch_size": args.batch_size,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "image_shape": [cfg.data.channels, cfg.data.resolution, cfg.data.resolution],
        "reference_seconds": reference_seconds,
        "eval_seconds": result.seconds,
        "reference_cpu_seconds": reference_cpu,
        "eval_cpu_seconds": eval_cpu,
        "sampling_seconds": result.sampling_seconds,
        "features_and_scores_seconds": result.seconds - result.sampling_seconds,
        "samples_per_s": args.num_samples / result.seconds,
        "peak_rss_mib": peak_rss_mib(),
        "weights": evaluator.features.describe(),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=2))
    write_result(out, args.out)


def section(r: Result) -> list[str]:
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
    ]


def summary(r: Result) -> str:
    return row(f"FID/KID evaluation of {r['num_samples']:,} samples, s",
               f"{r['eval_seconds']:.0f} wall, {r['eval_cpu_seconds']:.0f} CPU", "-", "-", "-", "measured (no peer)")


BENCHMARK = Benchmark(
    name="eval",
    title="The price of a rung: FID/KID evaluation",
    module="bench.bench_eval",
    order=50,
    section=section,
    args=Args(full="--num-samples 10000 --reference-images 2000", quick="--num-samples 64 --reference-images 64",
              cuda_full="--num-samples 10000 --reference-images 10000", cuda_quick="--num-samples 1000 --reference-images 1000"),
    summary=summary,
)


if __name__ == "__main__":
    main()
