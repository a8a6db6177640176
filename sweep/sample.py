"""``python -m sweep.sample MODEL --num N --out DIR``: N samples of a trained model as PNGs and one ``samples.npz``
(a uint8 (N, H, W, 3) array under ``arr_0``, the format external FID suites read), with a progress bar.

MODEL is a registered model (``models:/NAME@champion``, ``models:/NAME/VERSION``), a run id (its best model, with
the run's best sampling settings) or a checkpoint file; the model's own sampling settings are used. Batch k's
noises depend only on (--seed, k), so an interrupted run, started again with the same flags, draws only the
batches whose PNGs are missing (``DIR/sample.json`` records the flags and the model's hash, and a different
model or different flags are refused rather than mixed into the same folder).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffusion_core.checkpoint import CheckpointError, write_atomic
from diffusion_core.trainer import default_device
from sweep.generate import ImageSampler, load_sampler
from sweep.registry import resolve_model
from sweep.tracking import TrackingError

MANIFEST, ARRAY = "sample.json", "samples.npz"
IDENTITY = ("model_sha256", "num", "seed", "batch_size", "sampling")  # what a continued run must share with the first
EXIT_USAGE, EXIT_RUNTIME = 2, 1


class UsageError(ValueError):
    """Flags that cannot work; one line naming the flag and the fix."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.sample", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("model", help="models:/NAME@ALIAS, models:/NAME/VERSION, a run id, or a checkpoint file")
    p.add_argument("--num", type=int, required=True, help="number of samples (50000 for a paper FID)")
    p.add_argument("--out", type=Path, required=True, help="output folder (PNGs, samples.npz)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: the model's eval.batch_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noises (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="MLflow store of a registered model or run (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    return p.parse_args(argv)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim(out: Path, manifest: dict) -> None:
    """Write ``out``'s manifest, or check that the one there names the same model (by hash) and the same flags."""
    path = out / MANIFEST
    if path.is_file():
        found = json.loads(path.read_text())
        differ = [f"{k} {found.get(k)!r} (now {v!r})" for k, v in manifest.items() if k in IDENTITY and found.get(k) != v]
        if differ:
            raise UsageError(f"--out {out}: holds samples of other settings: {', '.join(differ)}; pass the same ones to "
                             "continue, or a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1))


def png_name(index: int, num: int) -> str:
    return f"{index:0{max(6, len(str(num - 1)))}d}.png"


def write_png(image: np.ndarray, path: Path) -> None:
    """One image, atomically (an interrupted run never leaves half a PNG that looks done)."""
    write_atomic(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))


def draw_missing(sampler: ImageSampler, out: Path, num: int, batch_size: int, seed: int) -> int:
    """Draw every batch with a missing PNG, with a progress bar; returns how many images were drawn."""
    batches = math.ceil(num / batch_size)
    names = [png_name(i, num) for i in range(num)]
    todo = [k for k in range(batches) if not all((out / n).is_file() for n in names[k * batch_size : (k + 1) * batch_size])]
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    drawn = 0
    with Progress(*columns) as progress:
        task = progress.add_task("sampling", total=num, completed=num - sum(min(batch_size, num - k * batch_size) for k in todo))
        for k in todo:
            images = sampler.batch(seed, k, min(batch_size, num - k * batch_size))
            for offset, image in enumerate(images):
                write_png(image, out / names[k * batch_size + offset])
            drawn += len(images)
            progress.advance(task, len(images))
    return drawn


def write_array(out: Path, num: int) -> Path:
    """All PNGs as one uint8 (N, H, W, 3) array in ``samples.npz`` (key ``arr_0``)."""
    images = np.stack([np.asarray(Image.open(out / png_name(i, num)).convert("RGB")) for i in range(num)])
    return write_atomic(out / ARRAY, lambda handle: np.savez(handle, arr_0=images))


def run(args: argparse.Namespace) -> Path:
    if args.num < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError(f"--num {args.num} / --batch-size {args.batch_size}: both must be at least 1")
    device = default_device() if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory() as folder:
        path = resolve_model(args.model, args.tracking_uri, Path(folder))
        sampler = load_sampler(str(path), device)
        batch_size = args.batch_size or sampler.batch_size
        settings = sampler.cfg.eval.settings().model_dump()
        claim(args.out, {"model": args.model, "model_sha256": sha256(path), "num": args.num, "seed": args.seed,
                         "batch_size": batch_size, "sampling": settings})
    print(f"{args.model}: {sampler.model.num_parameters():,} parameters on {sampler.device}; sampling with {json.dumps(settings)}")
    drawn = draw_missing(sampler, args.out, args.num, batch_size, args.seed)
    array = write_array(args.out, args.num)
    print(f"{args.num} samples ({drawn} drawn now) in {args.out}; array {array} of shape ({args.num}, {', '.join(map(str, sampler.shape))}), uint8")
    return array


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TrackingError, CheckpointError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
