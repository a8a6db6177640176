"""``python -m sweep.launch SPACE.yaml``: validate, check, then run an Optuna-guided, ASHA-pruned sweep
on Ray Tune with every trial tracked in MLflow, and print a summary."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import optuna
import yaml

from diffusion_core.config import ConfigError, expand_path
from diffusion_core.data import DatasetError
from diffusion_core.inception_weights import InceptionWeightsError
from sweep.config import SweepConfig, load_sweep
from sweep.estimate import print_cluster_estimate
from sweep.preflight import PreflightError, cluster_settings, preflight, storage_location
from sweep.runner import build_search, run_sweep
from sweep.space import Dimension, sample_configs
from sweep.sweep_state import SweepLockedError, sweep_lock
from sweep.uris import redact

EXIT_CONFIG, EXIT_PREFLIGHT = 2, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.launch", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("space", help="search-space YAML file (see search_spaces/ and docs/configuration.md)")
    p.add_argument("--address", help="Ray cluster to join ('auto', or host:port); default: start Ray locally (or $RAY_ADDRESS)")
    p.add_argument("--num-trials", type=int, help="override sweep.num_trials")
    p.add_argument("--storage-path", help="override sweep.storage_path (a folder, or s3://, gs:// for clusters)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of the same name")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved space and sampled configs, start nothing")
    p.add_argument("--measure", action="store_true", help="with --dry-run: time the model on this machine for the estimate (instead of sweep.throughput)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a value of the file (repeatable)")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> SweepConfig:
    """The sweep file with the command line's overrides, its local paths made absolute (trials run elsewhere)."""
    values: dict[str, Any] = {}
    if args.num_trials is not None:
        values["sweep.num_trials"] = args.num_trials
    if args.storage_path is not None:
        if not args.storage_path.strip():
            raise ConfigError("--storage-path: empty (an unset variable?); give a folder, or s3://BUCKET/PATH on a cluster")
        values["sweep.storage_path"] = args.storage_path
    cfg = load_sweep(args.space, args.overrides, values)
    for section, leaf in (("data", "root"), ("eval", "cache_dir"), ("eval", "inception_weights")):
        found = getattr(cfg, section)
        if isinstance(found.get(leaf), str) and "://" not in found[leaf]:
            found[leaf] = str(expand_path(found[leaf]).resolve())
    cfg.output_dir = str(expand_path(cfg.output_dir).resolve())
    return cfg


def print_dimensions(dimensions: list[Dimension]) -> None:
    for dim in dimensions:
        what = f"choice {dim.choices}" if dim.kind == "choice" else f"{dim.kind} [{dim.low:g}, {dim.high:g}]" + (f" step {dim.step}" if dim.step else "")
        cond = f"  if {dim.condition}" if dim.condition else ""
        print(f"  {dim.path}: {what}{cond}")


def describe_search(cfg: SweepConfig) -> str:
    """How the trials are chosen and stopped, in words."""
    s = cfg.sweep
    search = {"tpe": f"TPE after {s.n_startup_trials} random trials", "random": "random search",
              "grid": "grid search (every combination once)"}[s.search]
    if s.scheduler.type == "fifo":
        return f"{search}, no pruning (every trial to train.max_steps)"
    return f"{search}, ASHA pruning on FID (grace {cfg.grace_period} steps, reduction factor {s.scheduler.reduction_factor:g})"


def dry_run(cfg: SweepConfig, measure: bool = False) -> None:
    print(f"{cfg.source}: valid. Sweep {cfg.name!r}: {cfg.sweep.num_trials} trials, at most {cfg.sweep.max_concurrent} at once; "
          f"{describe_search(cfg)}.")
    print("\nFixed values (a dimension shows its first value):")
    print(yaml.safe_dump(cfg.base_raw(), sort_keys=False).rstrip())
    print("\nSearch dimensions:")
    print_dimensions(cfg.dimensions)
    search = cfg.sampling_search
    if search is not None:
        print(f"\nSampling-time search at each surviving trial's final rung ({search.trials} configurations, "
              f"{search.num_samples or 'eval.num_samples'} samples each; no retraining):")
        print_dimensions(search.dimensions)
    print("\nSampled configurations:")
    for params in sample_configs(cfg.dimensions, 3, cfg.sweep.seed):
        cfg.run_config(params)
        print("  " + json.dumps(params))
    print(f"\nMLflow: {redact(cfg.tracking.tracking_uri)} (experiment {cfg.experiment!r}); Ray results: {cfg.sweep.storage_path}")
    print_cluster_estimate(cfg, measure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cfg = load(args)
        build_search(cfg, cfg.run_config({}))
        if args.dry_run:
            dry_run(cfg, args.measure)
            return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return start(cfg, args.address or os.environ.get("RAY_ADDRESS") or None, args.resume)


def start(cfg: SweepConfig, address: str | None, resume: bool) -> int:
    """Preflight and run the sweep under its lock (one driver per sweep name); 0 when a trial produced a result."""
    try:
        cluster_settings(cfg, address)
        storage, experiment = storage_location(cfg)
        with sweep_lock(storage, cfg.name):
            checked = preflight(cfg, address, resume, storage, experiment)
            sweep = run_sweep(cfg, checked, address=address, resume=resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (PreflightError, SweepLockedError, DatasetError, InceptionWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT
    return 0 if sweep.trials and sweep.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
