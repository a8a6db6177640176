"""One training run without Ray: ``python -m diffusion_core.train CONFIG.yaml [--set key=value ...]``.

Reads the same sections as a sweep file (``sweep``, ``final`` and ``tracking`` are ignored; search dimensions
are refused), trains with periodic FID/KID evaluation, and writes checkpoints (last and best FID),
sample grids and a metrics log under ``output_dir/name``. Re-running continues from the last
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.config import MAY_CHANGE, SEARCH_KINDS, ConfigError, RunConfig, apply_overrides, parse_run_config, read_yaml
from diffusion_core.data import DatasetError
from diffusion_core.evaluate import Evaluator
from diffusion_core.inception_weights import InceptionWeightsError
from diffusion_core.loop import LAST, Best, Rung, RungLoop
from diffusion_core.trainer import DivergenceError, Trainer

SWEEP_ONLY_SECTIONS = ("sweep", "final", "tracking")


def _refuse_search_dimensions(raw: dict, source: str, prefix: str = "") -> None:
    for key, value in raw.items():
        if isinstance(value, dict) and set(SEARCH_KINDS) & set(value):
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


def progress_bar() -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    return Progress(*columns)


def run(cfg: RunConfig) -> Best:
    """Train ``cfg`` rung by rung into ``output_dir/name`` (continuing from its last checkpoint), writing
    ``metrics.jsonl`` and a sample grid per rung; returns the best rung."""
    out = Path(cfg.output_dir).expanduser() / cfg.name
    trainer = Trainer(cfg)
    progress = progress_bar()
    loop = RungLoop(trainer, Evaluator(cfg, trainer.device, progress=progress), out)
    if loop.restore(may_change={*MAY_CHANGE, "train.max_steps"}):
        print(f"continuing {out / LAST} at step {trainer.step}")
    print(f"model: {trainer.model.num_parameters():,} parameters on {trainer.device}; {loop.evaluator.features.describe()}")
    with progress, (out / "metrics.jsonl").open("a") as metrics_log:
        task = progress.add_task("training", total=cfg.train.max_steps, completed=trainer.step, status="")

        def write(rung: Rung) -> None:
            record = {"step": rung.step, **rung.metrics()}
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()
            progress.update(task, completed=rung.step, status=f"loss {record['loss']:.4f} FID {record['fid']:.2f} KID {record['kid']:.4f}")

        best = loop.run(write)
    if math.isfinite(best.fid):
        print(f"done: best FID {best.fid:.2f} at step {best.step} (EMA rate {best.ema_rate:g}); results in {out}")
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
