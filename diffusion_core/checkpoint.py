"""Checkpoint files: atomic writes, safe loads, and the two formats this project writes, each with a format
version so that an old or foreign file is one clear error line, never a TypeError deep in a restore.

* a **trainer checkpoint** (``kind: trainer``): everything needed to continue a run exactly (model, EMA bank,
  optimizer, step, RNG states, the rung loop's state);
* a **model file** (``kind: model``): one network's weights (the best EMA), its run config and what it scored:
  what sampling, interpolation, the sampling study and the model registry read.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from pydantic import ValidationError
from torch import nn

from diffusion_core.config import RunConfig
from diffusion_core.unet import build_unet

FORMAT_VERSION = 2  # 1: the unversioned files of diffusion-sweep before the rung loop
KINDS = ("trainer", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write through ``write`` into a temporary file in the same folder, fsync, then rename:
    readers (other trials included) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save, atomically."""
    return write_atomic(path, lambda handle: torch.save(state, handle))


def load_safe(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True (no pickled code); any failure is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a diffusion-sweep checkpoint (expected a dict)")
    return state


def save_checkpoint(state: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Write ``state`` atomically as a checkpoint of ``kind`` (``trainer`` or ``model``) in this format version."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    return save_atomic({"format": FORMAT_VERSION, "kind": kind, **state}, path)


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Load a checkpoint of one of ``kinds``; an unversioned, newer or foreign file is one CheckpointError line."""
    state = load_safe(path)
    version = state.get("format")
    if version is None:
        raise CheckpointError(f"{path}: written by an older diffusion-sweep (no format version; this one reads "
                              f"format {FORMAT_VERSION}); retrain, or load it with the version that wrote it")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is newer than this diffusion-sweep reads "
                              f"({FORMAT_VERSION}); upgrade diffusion-sweep")
    if state.get("kind") not in kinds:
        raise CheckpointError(f"{path}: a {state.get('kind')!r} checkpoint, expected {' or '.join(kinds)}")
    return state


def run_config_of(state: dict[str, Any], path: str | Path) -> RunConfig:
    """The run config stored in a checkpoint."""
    try:
        return RunConfig.model_validate(json.loads(state["config"]))
    except (KeyError, ValidationError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its run config does not validate with this version ({str(exc).splitlines()[0]})") from None


def save_model(path: str | Path, weights: dict[str, torch.Tensor], cfg: RunConfig, info: dict[str, Any]) -> Path:
    """A model file: the network's ``weights``, its run config and ``info`` (step, FID, EMA rate, sampling)."""
    return save_checkpoint({"weights": weights, "config": cfg.model_dump_json(), "info": info}, path, "model")


def model_weights(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, info) of a loaded checkpoint: a model file's network, or a trainer checkpoint's EMA at the
    rate of its best rung (its first rate before any evaluation)."""
    if state["kind"] == "model":
        return state["weights"], dict(state.get("info", {}))
    emas = state["emas"]["emas"]
    best = state.get("extra", {}).get("best") or {}
    chosen = next((e for e in emas if e["rate"] == best.get("ema_rate")), emas[0])
    return chosen["shadow"], {"step": state["step"], "ema_rate": chosen["rate"], **best}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The network (eval mode), run config and info of a model file or a trainer checkpoint."""
    state = load_checkpoint(path)
    cfg = run_config_of(state, path)
    weights, info = model_weights(state)
    model = build_unet(cfg)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not match its run config ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg, info
