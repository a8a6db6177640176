"""Training-path options, each measured against the defaults on the same device in the same run: the
real ``Trainer.train_step`` (batch from the dataset, loss, backward, clip, AdamW, EMA) with one option changed.

- ``train.channels_last`` and ``train.compile`` (off by default): speed with the option / speed without.
- The choices that are on by default are measured by turning each off: fused AdamW; on CUDA bf16 autocast
  (``train.mixed_precision``) and the dataset held on the device.

Repetitions are interleaved with the defaults (order rotated), and each figure is the median of the
per-repetition ratios. Warm-up steps (where ``torch.compile`` compiles) are timed separately.

    python -m bench.bench_train_options --out train_options.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench._benchmark import Args, Benchmark, Result
from bench._common import (
    Preset,
    add_step_timing_args,
    device_name,
    interleaved,
    median,
    paired_ratios,
    resolve_device,
    resolve_preset,
    step_timing,
    sync,
    write_result,
)
from bench._markdown import row
from diffusion_core.config import RunConfig
from diffusion_core.data import ImageData
from diffusion_core.trainer import Trainer


def run_config(p: Preset, **train: Any) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"dataset": "cifar10" if p.channels == 3 else "mnist", "image_size": p.image_size},
        "model": {"base_channels": p.base_channels, "channel_mult": list(p.channel_mult), "num_res_blocks": p.num_res_blocks,
                  "attention_resolutions": list(p.attention_resolutions), "num_heads": p.num_heads, "dropout": p.dropout},
        "train": {"batch_size": p.batch_size, **train},
    })


def unfuse_adamw(trainer: Trainer) -> None:
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=trainer.cfg.train.lr,
                                          weight_decay=trainer.cfg.train.weight_decay, fused=False)


def data_on_host(trainer: Trainer) -> None:
    trainer.data = trainer.data.to("cpu")


def variants(cuda: bool) -> dict[str, tuple[str, dict[str, Any], Callable[[Trainer], None] | None, bool]]:
    """name -> (what it changes, train-section overrides, a change made after construction, on by default?)."""
    out = {
        "channels_last": ("`train.channels_last: true` (NHWC model and batches)", {"channels_last": True}, None, False),
        "compile": ("`train.compile: true` (torch.compile, default mode)", {"compile": True}, None, False),
        "unfused_adamw": ("AdamW with `fused=False`", {}, unfuse_adamw, True),
    }
    if cuda:
        out |= {
            "fp32": ("`train.mixed_precision: false` (no bf16 autocast)", {"mixed_precision": False}, None, True),
            "data_on_host": ("dataset kept in host memory, batches copied per step", {}, data_on_host, True),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--preset", default="auto", choices=("auto", "cpu", "cifar"))
    p.add_argument("--batch-size", type=int, default=None)
    add_step_timing_args(p, cpu_repeats=9)
    p.add_argument("--only", nargs="*", default=None, help="measure only these variants")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    steps, repeats, warmup = step_timing(args, cuda, cpu_repeats=9)
    preset = resolve_preset(args.preset, device, {"batch_size": args.batch_size})
    if cuda:
        torch.backends.cudnn.benchmark = True
    generator = torch.Generator().manual_seed(0)
    shape = (max(1024, preset.batch_size), preset.channels, preset.image_size, preset.image_size)
    data = ImageData(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator), torch.zeros(shape[0], dtype=torch.int64))

    chosen = {k: v for k, v in variants(cuda).items() if not args.only or k in args.only}
    trainers: dict[str, Trainer] = {"default": Trainer(run_config(preset), device, data)}
    for name, (_, overrides, change, _) in chosen.items():
        trainers[name] = Trainer(run_config(preset, **overrides), device, data)
        if change is not None:
            change(trainers[name])
    warmup_seconds = {}
    for name, trainer in trainers.items():
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        sync(device)
        warmup_seconds[name] = time.perf_counter() - start
        print(f"{name}: {warmup} warm-up steps in {warmup_seconds[name]:.1f} s", flush=True)

    def runner(trainer: Trainer) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                trainer.train_step()
        return run

    times = interleaved({name: runner(t) for name, t in trainers.items()}, repeats, device)
    ips = {name: [preset.batch_size * steps / s for s in ts] for name, ts in times.items()}
    rows = []
    for name, (what, _, _, on_by_default) in chosen.items():
        ratios = paired_ratios(ips[name], ips["default"])
        rows.append({"name": name, "what": what, "on_by_default": on_by_default, "img_per_s": median(ips[name]),
                     "ratio_vs_default": median(ratios), "paired_ratios": ratios, "warmup_seconds": warmup_seconds[name]})
        print(f"{name}: {median(ips[name]):.2f} img/s, {median(ratios):.2f}x the defaults "
              f"(per repetition {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    result = {
        "benchmark": "train_options",
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "preset": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(preset).items()},
        "steps_per_repeat": steps,
        "repeats": repeats,
        "warmup_steps": warmup,
        "default_img_per_s": median(ips["default"]),
        "default_warmup_seconds": warmup_seconds["default"],
        "variants": rows,
        "torch": torch.__version__,
    }
    write_result(result, args.out)


def verdict(variant: Result) -> str:
    """A default stays if turning it off is slower; an option is a candidate default if it is at least 5% faster
    and faster in every repetition."""
    ratio, paired = variant["ratio_vs_default"], variant["paired_ratios"]
    if variant["on_by_default"]:
        return "default kept: turning it off is slower" if ratio < 1.0 else "**turning it off is not slower here**"
    spans = min(paired) <= 1.0 <= max(paired)
    return "helps: a candidate default" if ratio >= 1.05 and not spans else "no gain here: stays off"


def section(r: Result) -> list[str]:
    lines = [
        "## Training-path options (each against the defaults, same run)",
        "",
        "| option | on by default | img/s | speed vs defaults (median of per-repetition ratios) | warm-up s | verdict |",
        "|---|---|---|---|---|---|",
        f"| defaults | | {r['default_img_per_s']:.2f} | 1.00x | {r['default_warmup_seconds']:.1f} | |",
    ]
    for v in r["variants"]:
        paired = v["paired_ratios"]
        lines.append(row(v["what"], "yes (row = turned off)" if v["on_by_default"] else "no", f"{v['img_per_s']:.2f}",
                         f"**{v['ratio_vs_default']:.2f}x** (range {min(paired):.2f}-{max(paired):.2f})",
                         f"{v['warmup_seconds']:.1f}", verdict(v)))
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
    return lines


BENCHMARK = Benchmark(
    name="options",
    title="Training-path options",
    module="bench.bench_train_options",
    order=20,
    section=section,
    args=Args(quick="--steps 1 --repeats 3 --warmup 1 --batch-size 8", cuda_quick="--steps 1 --repeats 3 --warmup 1"),
)


if __name__ == "__main__":
    main()
