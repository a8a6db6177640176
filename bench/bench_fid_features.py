"""Inception feature-extraction throughput: diffusion_core ``InceptionFeatures`` vs pytorch-fid's own loop.

Both run on the same N random images in the same process. pytorch-fid's side is its ``InceptionV3([3])``
and the loop of ``pytorch_fid.fid_score.get_activations`` (DataLoader, no_grad, inputs in [0, 1]) over an
in-memory dataset instead of image files. Its weights: the release file in the torch hub cache if present,
else the same file ``InceptionFeatures`` resolved (pytorch-fid would otherwise try to download).

    python -m bench.bench_fid_features --num-images 2000 --out bench_fid_features.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pytorch_fid import inception as pfi
from torch.utils.data import DataLoader, TensorDataset

from bench._benchmark import Args, Benchmark, Result, Target
from bench._common import write_result
from bench._markdown import peer_table, ratio_list, throughput_summary
from diffusion_core.inception_weights import HUB_FILENAME
from diffusion_core.metrics import InceptionFeatures, build_pytorch_fid_inception

TARGET = Target(1.0)  # ours/pytorch-fid img/s


def pytorch_fid_model(weights_path: Path, device: torch.device) -> tuple[pfi.InceptionV3, str]:
    if (Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME).is_file():
        return pfi.InceptionV3([3]).to(device).eval(), "pytorch_fid.InceptionV3([3]), hub-cache weights"
    return build_pytorch_fid_inception(weights_path).to(device), f"pytorch_fid.InceptionV3([3]), {weights_path}"


def pytorch_fid_activations(model: pfi.InceptionV3, images01: torch.Tensor, batch_size: int,
                            device: torch.device) -> np.ndarray:
    """pytorch_fid.fid_score.get_activations' loop (its model output is already 1x1-pooled)."""
    loader = DataLoader(TensorDataset(images01), batch_size=batch_size, shuffle=False, num_workers=0)
    out, start = np.empty((len(images01), 2048)), 0
    for (batch,) in loader:
        with torch.no_grad():
            pred = model(batch.to(device))[0].squeeze(3).squeeze(2).cpu().numpy()
        out[start : start + len(pred)] = pred
        start += len(pred)
    return out


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[np.ndarray, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--chunk", type=int, default=250, help="images per interleaved timing chunk")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--weights", default=None, help="FID Inception weights (default: resolve_inception_weights)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    ours = InceptionFeatures(args.weights, device=device, batch_size=args.batch_size)
    theirs, theirs_desc = pytorch_fid_model(ours.weights.path, device)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.num_images, args.channels, args.image_size, args.image_size, generator=gen) * 2 - 1
    images01 = ((images + 1) / 2).expand(-1, 3, -1, -1).contiguous()  # pytorch-fid takes RGB in [0, 1]

    warm = min(args.batch_size, args.num_images)  # cuDNN autotuning, lazy init
    ours(images[:warm])
    pytorch_fid_activations(theirs, images01[:warm], args.batch_size, device)
    # Interleaved chunks (ours, then pytorch-fid, on the same images): load drift on a shared machine
    # hits both sides alike, and the per-chunk ratios show the noise level.
    feats_ours, feats_theirs, t_ours, t_theirs, paired = [], [], 0.0, 0.0, []
    for start in range(0, args.num_images, args.chunk):
        chunk = slice(start, start + args.chunk)
        f_ours, s_ours = timed(lambda: ours(images[chunk]), device)
        f_theirs, s_theirs = timed(lambda: pytorch_fid_activations(theirs, images01[chunk], args.batch_size, device), device)
        feats_ours.append(f_ours)
        feats_theirs.append(f_theirs)
        t_ours, t_theirs = t_ours + s_ours, t_theirs + s_theirs
        paired.append(s_theirs / s_ours)
    feats_ours, feats_theirs = np.concatenate(feats_ours), np.concatenate(feats_theirs)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "image_shape": [args.channels, args.image_size, args.image_size],
        "ours_img_per_s": args.num_images / t_ours,
        "pytorch_fid_img_per_s": args.num_images / t_theirs,
        "ratio": statistics.median(paired),
        "paired_ratios": paired,
        "chunk": args.chunk,
        "max_abs_feature_diff": float(np.abs(feats_ours - feats_theirs).max()),
        "ours": ours.describe(),
        "pytorch_fid": theirs_desc,
        "torch": torch.__version__,
    }
    print("| device | N | ours img/s | pytorch-fid img/s | ratio | max abs feature diff |")
    print("|---|---|---|---|---|---|")
    print(f"| {result['device']} | {args.num_images} | {result['ours_img_per_s']:.1f} | "
          f"{result['pytorch_fid_img_per_s']:.1f} | {result['ratio']:.2f}x | {result['max_abs_feature_diff']:.1e} |")
    write_result(result, args.out)


def section(r: Result) -> list[str]:
    return peer_table(
        r, "FID feature extraction (InceptionFeatures vs pytorch-fid's get_activations loop)", "pytorch-fid",
        f"img/s ({r['num_images']} images, batch {r['batch_size']}, interleaved chunks of {r['chunk']})",
        "pytorch_fid_img_per_s", TARGET,
    ) + [
        "",
        f"- Device: {r['device']}; images {r['image_shape']}, upsampled to 299x299 by both; max |feature diff| {r['max_abs_feature_diff']:.1e}.",
        f"- Ours: {r['ours']}.",
        f"- Peer: {r['pytorch_fid']}.",
        f"- Per-chunk ratios ours/pytorch-fid (each pair adjacent in time): {ratio_list(r['paired_ratios'])}; "
        "the headline ratio is their median, img/s are totals.",
    ]


BENCHMARK = Benchmark(
    name="fid",
    title="FID feature extraction",
    module="bench.bench_fid_features",
    order=40,
    section=section,
    args=Args(full="--num-images 2000 --batch-size 50", quick="--num-images 32 --batch-size 16",
              cuda_quick="--num-images 500 --batch-size 50"),
    target=TARGET,
    summary=throughput_summary("FID Inception features, img/s", "pytorch_fid_img_per_s", "pytorch-fid", TARGET),
)


if __name__ == "__main__":
    main()
