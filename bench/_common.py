"""Helpers shared by the benchmarks: device choice, size presets, the diffusers twin of our UNet,
FLOP counting and peak-FLOP/s lookup, interleaved timing."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion_core.unet import UNet

# Dense bf16 tensor-core peak FLOP/s by GPU name (most specific key first; matched as a substring
# of torch.cuda.get_device_name). Vendor datasheet figures, without sparsity.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
]


@dataclass(frozen=True)
class Preset:
    image_size: int
    channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_heads: int
    batch_size: int
    dropout: float = 0.1  # ModelConfig default


PRESETS: dict[str, Preset] = {
    # CIFAR-10 DDPM-sized (Ho et al. layout, 4 heads at 16x16; 38.3M parameters): GPU-sized.
    "cifar": Preset(32, 3, 128, (1, 2, 2, 2), 2, (16,), 4, 128),
    # Small enough for a shared 2-core CPU.
    "cpu": Preset(32, 3, 32, (1, 2, 2), 2, (16,), 4, 16),
}


# An absolute or home path inside a text: "/" or "~/" not preceded by a word character, folders, the last name.
ABSOLUTE_PATH = re.compile(r"(?<![\w.])~?/(?:[\w.+~-]+/)+([\w.+~-]+)")


def file_names(value: Any) -> Any:
    """``value`` (a JSON result) with every absolute path in its texts cut to its file name: results must not
    carry one machine's folders (``/home/me/.cache/.../weights.pth`` -> ``weights.pth``)."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(r"\1", value)
    if isinstance(value, dict):
        return {k: file_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [file_names(v) for v in value]
    return value


def write_result(result: dict[str, Any], out: Path | None) -> None:
    """A benchmark's result as JSON at ``out`` (run_all reads it back), if given, paths cut to file names."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(file_names(result), indent=2) + "\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_step_timing_args(p: argparse.ArgumentParser, cpu_repeats: int) -> None:
    """``--steps``/``--repeats``/``--warmup`` of the training-step benchmarks (defaults by device: see ``step_timing``)."""
    p.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 20 GPU, 1 CPU)")
    p.add_argument("--repeats", type=int, default=None, help=f"interleaved repetitions (default 7 GPU, {cpu_repeats} CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU, 2 CPU)")


def step_timing(args: argparse.Namespace, cuda: bool, cpu_repeats: int) -> tuple[int, int, int]:
    """(timed steps per repetition, repetitions, warm-up steps)."""
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    return args.steps or (20 if cuda else 1), args.repeats or (7 if cuda else cpu_repeats), warmup


def resolve_preset(name: str, device: torch.device, overrides: dict[str, Any]) -> Preset:
    """``auto`` is ``cifar`` on CUDA and ``cpu`` otherwise; non-None ``overrides`` replace fields."""
    if name == "auto":
        name = "cifar" if device.type == "cuda" else "cpu"
    fields = asdict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields["channel_mult"] = tuple(fields["channel_mult"])
    fields["attention_resolutions"] = tuple(fields["attention_resolutions"])
    return Preset(**fields)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def peak_bf16_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, matched key) for a CUDA device, (None, reason) otherwise."""
    if device.type != "cuda":
        return None, "CPU: no peak table"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in name.lower():
            return peak, key
    return None, f"{name!r} not in the peak table (pass --peak-flops)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_ours(p: Preset) -> UNet:
    return UNet(
        in_channels=p.channels,
        base_channels=p.base_channels,
        channel_mult=p.channel_mult,
        num_res_blocks=p.num_res_blocks,
        attention_resolutions=p.attention_resolutions,
        num_heads=p.num_heads,
        dropout=p.dropout,
        image_size=p.image_size,
    )


def diffusers_config(p: Preset) -> dict[str, Any]:
    """UNet2DModel kwargs mirroring our UNet: same widths, blocks per level, attention levels, head
    size, scale-shift timestep conditioning, GroupNorm groups and sinusoidal embedding width.

    diffusers' down block i works at resolution image_size / 2**i and our level i does too, so an
    attention resolution r maps to the level whose resolution is r (ceil-halving like our UNet)."""
    res, attend = p.image_size, []
    for _ in p.channel_mult:
        attend.append(res in p.attention_resolutions)
        res = (res + 1) // 2
    widths = tuple(m * p.base_channels for m in p.channel_mult)
    head_dims = {w // p.num_heads for w, a in zip(widths, attend, strict=True) if a} | {widths[-1] // p.num_heads}
    if len(head_dims) != 1:  # diffusers takes one attention_head_dim for every block
        raise ValueError(f"attention levels have different head sizes {sorted(head_dims)}")
    return dict(
        sample_size=p.image_size,
        in_channels=p.channels,
        out_channels=p.channels,
        block_out_channels=widths,
        layers_per_block=p.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        attention_head_dim=head_dims.pop(),
        norm_num_groups=math.gcd(32, p.base_channels),
        resnet_time_scale_shift="scale_shift",
        dropout=p.dropout,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def build_diffusers(p: Preset) -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(**diffusers_config(p))


def num_params(model: nn.Module) -> int:
    return sum(q.numel() for q in model.parameters())


def randomize_zero_init(model: nn.Module) -> nn.Module:
    """Re-initialise layers that our UNet zero-initialises (output conv, residual convs, attention
    projections), so that an untrained network predicts something non-trivial."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear) and not bool(m.weight.detach().any()):
            m.reset_parameters()
    return model


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by torch.utils.flop_counter (matmul/conv/attention).

    Attention runs on the math SDPA backend while counting: the counter has no formula for the CPU
    flash kernel (``_scaled_dot_product_flash_attention_for_cpu``), so which backend a model's
    q/k/v layout happens to select would otherwise change its FLOP count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(counter.get_total_flops())


def interleaved(
    runs: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each run, ``repeats`` times, interleaved (order rotated every repetition
    so that machine-load drift and thermal state hit every contestant alike)."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            runs[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a_i / b_i for the i-th repetition of each (adjacent in time, so load drift mostly cancels)."""
    return [x / y for x, y in zip(a, b, strict=True)]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """Relative half-range (max - min) / (2 median): a crude noise indicator."""
    return (max(xs) - min(xs)) / (2 * statistics.median(xs)) if xs else float("nan")


def op_profile(fn: Callable[[], Any], device: torch.device, top: int = 8) -> dict[str, Any]:
    """One call of ``fn`` under torch.profiler: the ``top`` ops by self time (device time on CUDA)
    and the scaled-dot-product-attention kernels it dispatched to (``..._math`` = the unfused
    fallback, which materialises the full attention matrix)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    attention = sorted({e.key for e in events if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})
    return {
        "time_kind": "device self time" if device.type == "cuda" else "CPU self time",
        "top_ops": [{"op": e.key, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
                    for e in ranked],
        "attention_kernels": attention,
        "attention_math_fallback": any("attention_math" in k for k in attention),
    }
