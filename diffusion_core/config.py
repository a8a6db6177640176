"""Typed configuration of one training run: the data, model, diffusion, train and eval sections.

The same sections form a sweep file (``sweep.config`` adds search dimensions and the
``sweep``/``tracking`` sections); a single run (``python -m diffusion_core.train``) uses them as is.
Validation is done by pydantic: unknown keys, wrong types and impossible values are rejected
with the key path, so a run never starts on a config it cannot finish.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffusion_core.objectives import PREDICTIONS
from diffusion_core.samplers import SamplerSettings
from diffusion_core.schedules import SCHEDULES
from diffusion_core.yaml_input import parse_yaml, read_yaml_file

DATASET_CHANNELS = {"cifar10": 3, "mnist": 1, "digits": 1, "stl10": 3}
DATASET_SIZES = {"cifar10": 32, "mnist": 28, "digits": 8, "stl10": 96}
DEFAULT_ROOT = "~/.cache/diffusion-sweep/data"
LOCATION_KEYS = {  # where things are, not what a run does: a continued run may find them elsewhere
    "data.root": "the dataset's folder", "data.download": "whether a missing dataset is downloaded",
    "eval.cache_dir": "the reference-statistics cache", "eval.inception_weights": "the FID weights' file (checked by sha256)",
    "output_dir": "the folder of single runs",
}
EXECUTION_KEYS = {  # how a run executes, not what it trains: a checkpoint loads either way
    "train.channels_last": "the memory format", "train.compile": "torch.compile", "train.mixed_precision": "bf16 autocast on CUDA",
    "eval.batch_size": "the sampling batch", "train.checkpoint_every": "how often a checkpoint is written",
}
MAY_CHANGE = {**LOCATION_KEYS, **EXECUTION_KEYS}  # what a continued run or a resumed sweep may change
SEARCH_KINDS = ("choice", "uniform", "loguniform", "int")  # a mapping with one of these keys is a search dimension
RENAMED_KEYS = {"train.ema_decay": "train.ema_rates (one EMA rate, or a list of them: an EMA bank)"}


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the file and the key path."""


def _safe_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{name[:40]!r} is not a safe name: 1-100 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (it names folders, runs and experiments)")
    return name


def expand_path(text: str) -> Path:
    """``text`` as a path with ``~`` expanded; a NUL byte, a line break or an unknown ``~user`` is a ValueError."""
    if any(c in text for c in "\x00\n\r"):
        raise ValueError("a path must not contain NUL bytes or line breaks")
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {text.split('/', 1)[0]!r}: no such user's home folder") from None


def _path_text(text: str) -> str:
    if "://" not in text:
        expand_path(text)
    elif any(c in text for c in "\x00\n\r"):
        raise ValueError("a URI must not contain NUL bytes or line breaks")
    return text


Name = Annotated[str, AfterValidator(_safe_name)]
PathText = Annotated[str, AfterValidator(_path_text)]  # a folder or file (``~`` allowed), or a URI
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    """A config section: unknown keys refused, strict types (no bool for an int, no string for a bool), finite floats."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class DataConfig(Section):
    dataset: Literal["cifar10", "mnist", "digits", "stl10"] = "digits"
    root: PathText = DEFAULT_ROOT
    download: bool = True
    image_size: int | None = Field(default=None, ge=8, le=256)
    subset: int | None = Field(default=None, ge=1)

    @property
    def channels(self) -> int:
        return DATASET_CHANNELS[self.dataset]

    @property
    def resolution(self) -> int:
        return self.image_size or DATASET_SIZES[self.dataset]

    @property
    def num_classes(self) -> int:
        return 10


class ModelConfig(Section):
    base_channels: int = Field(default=64, ge=4, le=1024)
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 2], min_length=1, max_length=6)
    num_res_blocks: int = Field(default=2, ge=1, le=8)
    attention_resolutions: list[int] = Field(default_factory=lambda: [16])
    num_heads: int = Field(default=4, ge=1, le=64)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    class_conditional: bool = False

    @field_validator("channel_mult")
    @classmethod
    def _positive_mults(cls, mults: list[int]) -> list[int]:
        if any(m < 1 for m in mults):
            raise ValueError("every channel multiplier must be >= 1")
        return mults

    @model_validator(mode="after")
    def _heads_divide_channels(self) -> ModelConfig:
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            if channels % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} does not divide the {channels} channels of a level "
                    f"(base_channels {self.base_channels} x mult {mult}); pick a divisor"
                )
        return self


class DiffusionConfig(Section):
    schedule: Literal[tuple(SCHEDULES)] = "linear"  # type: ignore[valid-type]
    timesteps: int = Field(default=1000, ge=2, le=100_000)
    prediction: Literal[tuple(PREDICTIONS)] = "eps"  # type: ignore[valid-type]
    cosine_s: float = Field(default=0.008, gt=0.0, lt=1.0)
    min_timestep: int = Field(default=0, ge=0, description="smallest 0-based t drawn in training (1 gives seed 001's t ~ U{2..T})")
    learn_sigma: bool = Field(default=False, description="U-Net also outputs Σθ (improved DDPM eq. 15), trained with the hybrid loss (eq. 16)")
    vlb_weight: float = Field(default=0.001, ge=0.0, description="λ of the hybrid loss L_simple + λ·L_vlb (used with learn_sigma)")

    @model_validator(mode="after")
    def _min_timestep_below_t(self) -> DiffusionConfig:
        if self.min_timestep >= self.timesteps:
            raise ValueError(f"min_timestep {self.min_timestep} must be below timesteps {self.timesteps}")
        return self


class TrainConfig(Section):
    batch_size: int = Field(default=64, ge=1, le=65536)
    lr: float = Field(default=2e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    ema_rates: list[float] = Field(default_factory=lambda: [0.999], min_length=1, max_length=16,
                                   description="EMA rates kept in one training (an EMA bank), each evaluated at every rung")
    ema_warmup_steps: int = Field(default=0, ge=0)
    max_steps: int = Field(default=1000, ge=1)
    checkpoint_every: int | None = Field(default=None, ge=1)
    label_dropout: float = Field(default=0.1, ge=0.0, le=1.0)
    mixed_precision: bool = True
    channels_last: bool = Field(default=False, description="NHWC memory format for the U-Net and its batches")
    compile: bool = Field(default=False, description="torch.compile the training forward and backward (compiles once per trial)")
    seed: Seed = 0

    @field_validator("ema_rates", mode="before")
    @classmethod
    def _one_rate_is_a_bank_of_one(cls, rates: Any) -> Any:
        return [rates] if isinstance(rates, (int, float)) and not isinstance(rates, bool) else rates

    @field_validator("ema_rates")
    @classmethod
    def _rates_in_unit_interval(cls, rates: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in rates):
            raise ValueError("every EMA rate must be in (0, 1), e.g. [0.999, 0.9999]")
        if len(set(rates)) != len(rates):
            raise ValueError(f"duplicate EMA rates in {rates}")
        return rates


class EvalConfig(SamplerSettings):
    """Evaluation at every rung: the sampling settings (``SamplerSettings``' fields) and the FID/KID budget."""

    model_config = Section.model_config

    every_steps: int = Field(default=500, ge=1)
    num_samples: int = Field(default=256, ge=2)
    batch_size: int = Field(default=128, ge=1)
    reference_split: Literal["train", "test"] = "test"
    reference_images: int = Field(default=1000, ge=2)
    kid_subset_size: int = Field(default=100, ge=2)
    inception_weights: PathText | None = None
    cache_dir: PathText = "~/.cache/diffusion-sweep/fid_reference"
    grid_size: int = Field(default=64, ge=1)
    seed: Seed = 1234


class RunConfig(Section):
    """One training run: everything a Trainer needs."""

    name: Name = "run"
    output_dir: PathText = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        levels = len(self.model.channel_mult)
        if self.data.resolution < 2 ** (levels - 1) * 2:
            raise ValueError(
                f"image size {self.data.resolution} is too small for {levels} U-Net levels; "
                "shorten model.channel_mult"
            )
        if self.eval.sampler == "ddim" and self.eval.sampling_steps > self.diffusion.timesteps:
            raise ValueError(
                f"eval.sampling_steps {self.eval.sampling_steps} exceeds diffusion.timesteps "
                f"{self.diffusion.timesteps}"
            )
        return self


def error_line(source: str | Path, exc: ValidationError) -> str:
    """One line naming the file, the key path of the first error and what is wrong."""
    first = exc.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        renamed = RENAMED_KEYS.get(path)
        message = f"renamed: use {renamed}" if renamed else "unknown key (check the spelling; see docs/configuration.md)"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {path}: {message}{suffix}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (``yaml_input``'s limits); any problem becomes a one-line ConfigError."""
    try:
        raw = read_yaml_file(expand_path(str(path)))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_run_config(raw: dict[str, Any], source: str | Path = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(error_line(source, exc)) from None


def load_run_config(path: str | Path) -> RunConfig:
    return parse_run_config(read_yaml(path), path)


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key path -> (old value, new value) for every leaf that differs between two nested mappings."""
    before, after = flatten(old), flatten(new)
    return {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)}


def set_value(raw: dict[str, Any], key: str, value: Any, source: str | Path = "--set") -> None:
    """Set ``key.path`` in a nested mapping to ``value``, creating sections on the way."""
    node, parts = raw, key.split(".")
    if not all(parts):
        raise ConfigError(f"{source}: {key!r}: expected key.path=value")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], assignments: list[str], source: str | Path = "--set") -> dict[str, Any]:
    """Apply ``key.path=value`` assignments (values parsed as YAML) to a nested mapping, in place."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: {assignment[:80]!r}: expected key.path=value")
        try:
            value = parse_yaml(text)
        except ValueError:
            raise ConfigError(f"{source}: {key}: cannot parse value {text[:80]!r} as YAML") from None
        set_value(raw, key, value, source)
    return raw
