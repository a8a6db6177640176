"""One training run without Ray: ``python -m diffusion_core.train CONFIG.yaml [--set key=value ...]``.

Reads the same sections as a sweep file (``sweep`` and ``tracking`` are ignored; search dimensions
are refused), trains with periodic FID/KID evaluation, and writes checkpoints (last and best FID),
sample grids and a metrics log under ``output_dir/name``. Re-running continues from the last
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from PIL import Image
from torch import Tensor

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.config import ConfigError, RunConfig, apply_overrides, parse_run_config, read_yaml
from diffusion_core.data import DatasetError
from diffusion_core.evaluate import Evaluator, evaluate_bank
from diffusion_core.inception_weights import InceptionWeightsError
from diffusion_core.trainer import DivergenceError, Trainer

SWEEP_ONLY_SECTIONS = ("sweep", "tracking")


SEARCH_KEYS = {"choice", "uniform", "loguniform", "int"}


def _refuse_search_dimensions(raw: dict, source: str, prefix: str = "") -> None:
    for key, value in raw.items():
        if isinstance(value, dict) and SEARCH_KEYS & set(value):
            raise ConfigError(f"{source}: {prefix}{key}: a search dimension; a single run needs a fixed value "
                              "(sweep it with python -m sweep.launch)")
        if isinstance(value, dict):
            _refuse_search_dimensions(value, source, f"{prefix}{key}.")


def load_config(path: str, overrides: list[str]) -> RunConfig:
    raw = apply_overrides(read_yaml(path), overrides)
    for section in SWEEP_ONLY_SECTIONS:
        raw.pop(section, None)
    _refuse_search_dimensions(raw, path)
    return parse_run_config(raw, path)


def save_png(grid: Tensor, path: Path) -> None:
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def run(cfg: RunConfig) -> dict[str, float]:
    out = Path(cfg.output_dir).expanduser() / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    last = out / "checkpoint_last.pt"
    best: dict[str, float] = {"fid": float("inf")}
    if last.exists():
        best = trainer.load_checkpoint(last).get("best", best)
        print(f"continuing {last} at step {trainer.step}")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    progress = Progress(*columns)
    evaluator = Evaluator(cfg, trainer.device, progress=progress)
    print(f"model: {trainer.model.num_parameters():,} parameters on {trainer.device}; {evaluator.features.describe()}")
    with progress, (out / "metrics.jsonl").open("a") as metrics_log:
        task = progress.add_task("training", total=cfg.train.max_steps, completed=trainer.step, status="")
        while trainer.step < cfg.train.max_steps:
            target = min(cfg.train.max_steps, (trainer.step // cfg.eval.every_steps + 1) * cfg.eval.every_steps)
            losses = trainer.train_until(target)
            progress.update(task, completed=trainer.step, status=f"loss {losses[-1]:.4f} | evaluating")
            bank = evaluate_bank(evaluator, trainer.emas.models(), trainer.schedule)
            result = bank.best
            record = {"step": trainer.step, "loss": sum(losses) / len(losses), **bank.metrics()}
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()
            save_png(result.grid, out / f"samples_{trainer.step:07d}.png")
            if result.fid < best["fid"]:
                best = record
                trainer.save_checkpoint(out / "checkpoint_best.pt", extra={"best": best})
            trainer.save_checkpoint(last, extra={"best": best})
            progress.update(task, status=f"loss {record['loss']:.4f} FID {result.fid:.2f} KID {result.kid:.4f}")
    if "step" in best:
        print(f"done: best FID {best['fid']:.2f} at step {best['step']} (EMA rate {best.get('ema_rate', cfg.train.ema_decay):g}); results in {out}")
    else:
        print(f"nothing to do: already at step {trainer.step} of train.max_steps {cfg.train.max_steps}; results in {out}")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML file with data/model/diffusion/train/eval sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg)
    except (ConfigError, DatasetError, InceptionWeightsError, CheckpointError, DivergenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
