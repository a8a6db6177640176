"""Evaluator: common random numbers, reproducible FID, the reference-statistics cache and EvalResult.

The Inception forward runs at a few images per second on a small CPU, so everything here uses 8
samples and 32 reference images, and one Inception network shared by the module.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FID_WEIGHTS, ema_model, require, tiny_config

from diffusion_core.data import to_uint8
from diffusion_core.evaluate import EvalResult, Evaluator, fixed_noise, sampler_settings
from diffusion_core.metrics import InceptionFeatures
from diffusion_core.samplers import SamplerSettings
from diffusion_core.trainer import Trainer

NUM_SAMPLES = 8
REFERENCE_IMAGES = 32


def eval_config(cache_dir: Path | str, **eval_section):
    """8x8 digits, 8 samples by DDPM (per-step noise: the sampler's generator must be seeded too)."""
    section = {
        "num_samples": NUM_SAMPLES,
        "batch_size": 4,  # two sampling batches: the noise must be split consistently
        "sampler": "ddpm",
        "sampling_steps": 10,
        "reference_images": REFERENCE_IMAGES,
        "kid_subset_size": NUM_SAMPLES,
        "inception_weights": str(FID_WEIGHTS),
        "cache_dir": str(cache_dir),
        **eval_section,
    }
    return tiny_config(eval=section)


@pytest.fixture(scope="module")
def features() -> InceptionFeatures:
    require(FID_WEIGHTS, "FID Inception weights")
    return InceptionFeatures(FID_WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fid_reference")


@pytest.fixture(scope="module")
def trained(cache_dir):
    """A briefly trained model (the untrained U-Net's zero output layer would make every model alike)."""
    trainer = Trainer(eval_config(cache_dir), device="cpu")
    trainer.train_until(30)
    return trainer


@pytest.fixture(scope="module")
def evaluated(trained, features, cache_dir):
    """Two evaluations of the same model by one Evaluator."""
    evaluator = Evaluator(eval_config(cache_dir), "cpu", features)
    seen = features.images_seen
    first = evaluator(ema_model(trained), trained.schedule)
    reference_passes = features.images_seen - seen - NUM_SAMPLES
    second = evaluator(ema_model(trained), trained.schedule)
    return {"evaluator": evaluator, "first": first, "second": second, "reference_passes": reference_passes}


# --- common random numbers --------------------------------------------------------------------


def test_fixed_noise_depends_only_on_the_eval_seed(tmp_path):
    cfg = eval_config(tmp_path)
    x_T, labels = fixed_noise(cfg)
    assert x_T.shape == (NUM_SAMPLES, 1, 8, 8) and labels is None
    assert torch.equal(fixed_noise(cfg)[0], x_T)
    torch.manual_seed(987)  # the global RNG plays no part
    assert torch.equal(fixed_noise(eval_config(tmp_path))[0], x_T)
    other = fixed_noise(eval_config(tmp_path, seed=cfg.eval.seed + 1))[0]
    assert other.shape == x_T.shape and not torch.allclose(other, x_T)
    assert abs(float(x_T.std()) - 1) < 0.5  # standard normal, not e.g. zeros


def test_fixed_noise_is_identical_in_another_process(tmp_path):
    cfg = eval_config(tmp_path, seed=4321, num_samples=6)
    x_T = fixed_noise(cfg)[0]
    out = tmp_path / "noise.pt"
    code = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "torch.manual_seed(5)\n"
        "from helpers import tiny_config\n"
        "from diffusion_core.evaluate import fixed_noise\n"
        "cfg = tiny_config(eval={'seed': 4321, 'num_samples': 6})\n"
        "torch.save(fixed_noise(cfg)[0], sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(Path(__file__).parent)], check=True, timeout=120)
    assert torch.equal(torch.load(out, weights_only=True), x_T)


def test_class_conditional_labels_are_seeded_too(tmp_path):
    cfg = eval_config(tmp_path).model_copy(deep=True)
    cfg.model.class_conditional = True
    x_T, labels = fixed_noise(cfg)
    assert labels is not None and labels.shape == (NUM_SAMPLES,) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < cfg.data.num_classes
    x_again, labels_again = fixed_noise(cfg)
    assert torch.equal(x_again, x_T) and torch.equal(labels_again, labels)


def test_generate_is_reproducible_and_starts_from_the_fixed_noise(trained, features, cache_dir):
    evaluator = Evaluator(eval_config(cache_dir), "cpu", features)
    assert torch.equal(evaluator.x_T, fixed_noise(evaluator.cfg)[0])
    a = evaluator.generate(ema_model(trained), trained.schedule)
    b = evaluator.generate(ema_model(trained), trained.schedule)
    assert a.shape == (NUM_SAMPLES, 1, 8, 8) and torch.equal(a, b)
    reseeded = Evaluator(eval_config(cache_dir, seed=99), "cpu", features)
    assert not torch.allclose(reseeded.generate(ema_model(trained), trained.schedule), a)


# --- evaluation results -----------------------------------------------------------------------


def test_same_model_gives_identical_fid(evaluated):
    first, second = evaluated["first"], evaluated["second"]
    assert first.fid == second.fid
    assert first.kid == second.kid and first.kid_std == second.kid_std
    assert torch.equal(first.grid, second.grid)


def test_eval_result_fields(evaluated):
    result: EvalResult = evaluated["first"]
    assert math.isfinite(result.fid) and result.fid > 0
    assert math.isfinite(result.kid) and math.isfinite(result.kid_std) and result.kid_std >= 0
    assert result.seconds > 0
    grid = result.grid
    assert grid.dtype == torch.uint8 and grid.ndim == 3 and grid.shape[0] == 3
    # make_grid: nrow = int(sqrt(8)) = 2 columns, 4 rows of 8x8 tiles with 2-pixel padding
    assert tuple(grid.shape) == (3, 4 * 10 + 2, 2 * 10 + 2)
    assert result.metrics() == {"fid": result.fid, "kid": result.kid, "kid_std": result.kid_std, "fid_std": result.fid_std,
                                "eval_seconds": result.seconds}
    assert 0 < result.fid_std < result.fid


def test_grid_shows_the_generated_samples(evaluated, trained):
    evaluator, grid = evaluated["evaluator"], evaluated["first"].grid
    images = to_uint8(evaluator.generate(ema_model(trained), trained.schedule))
    for i in (0, 1, 2):  # tiles left to right, top to bottom
        row, col = divmod(i, 2)
        tile = grid[:, 2 + row * 10 : 2 + row * 10 + 8, 2 + col * 10 : 2 + col * 10 + 8]
        assert torch.equal(tile, images[i].expand(3, -1, -1))


def test_first_evaluation_computes_the_reference_once(evaluated):
    assert evaluated["reference_passes"] == REFERENCE_IMAGES
    assert evaluated["evaluator"].reference.features.shape == (REFERENCE_IMAGES, 2048)


def test_second_evaluator_reads_the_reference_from_the_cache(evaluated, features, cache_dir):
    assert any(cache_dir.glob("ref-*.npz"))
    first_ref = evaluated["evaluator"].reference
    second = Evaluator(eval_config(cache_dir), "cpu", features)
    seen = features.images_seen
    reference = second.reference
    assert features.images_seen == seen, "the reference statistics were recomputed instead of read from the cache"
    assert reference.key["num_images"] == REFERENCE_IMAGES and reference.key["dataset"] == "digits"
    assert (reference.mu == first_ref.mu).all() and (reference.sigma == first_ref.sigma).all()


def test_a_fresh_inception_network_also_uses_the_cache(evaluated, cache_dir):
    """As another process would: its own InceptionFeatures, same cache directory."""
    evaluator = Evaluator(eval_config(cache_dir), "cpu")
    assert evaluator.features is not None and evaluator.features.images_seen == 0
    evaluator.reference
    assert evaluator.features.images_seen == 0


def test_another_reference_size_is_a_separate_cache_entry(evaluated, features, cache_dir):
    second = Evaluator(eval_config(cache_dir, reference_images=4), "cpu", features)
    seen = features.images_seen
    assert second.reference.features.shape == (4, 2048)
    assert features.images_seen == seen + 4


def test_different_model_gives_different_fid(evaluated, features, cache_dir):
    untrained = Trainer(eval_config(cache_dir), device="cpu")
    result = Evaluator(eval_config(cache_dir), "cpu", features)(ema_model(untrained), untrained.schedule)
    assert math.isfinite(result.fid) and result.fid != evaluated["first"].fid


# --- sampler settings -------------------------------------------------------------------------


def test_sampler_settings_maps_the_eval_section(tmp_path):
    cfg = eval_config(tmp_path, sampler="ddim", sampling_steps=7, eta=0.3, guidance_weight=2.5, clip="dynamic", threshold_percentile=0.9)
    assert sampler_settings(cfg) == SamplerSettings(sampler="ddim", sampling_steps=7, eta=0.3, guidance_weight=2.5, clip="dynamic", threshold_percentile=0.9)
    cfg = eval_config(tmp_path, sampler="ddpm", sampling_steps=10, clip="none")
    assert sampler_settings(cfg) == SamplerSettings(sampler="ddpm", sampling_steps=10, eta=0.0, guidance_weight=1.0, clip="none", threshold_percentile=0.995)


def test_sampler_steps_are_capped_at_the_training_timesteps(tmp_path):
    cfg = eval_config(tmp_path, sampler="ddpm", sampling_steps=500)  # ddim would be refused by the config
    assert cfg.diffusion.timesteps == 100
    assert sampler_settings(cfg).sampling_steps == 100


# --- progress bars ----------------------------------------------------------------------------


class RecordingProgress:
    """Stands in for rich's Progress: records each task's total, advances and removal."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: int, **fields) -> int:
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "done": 0, "removed": False}
        return len(self.tasks) - 1

    def advance(self, task: int, amount: int) -> None:
        self.tasks[task]["done"] += amount

    def remove_task(self, task: int) -> None:
        self.tasks[task]["removed"] = True


def test_progress_shows_sampling_and_inception_passes_to_completion(trained, features, cache_dir):
    progress = RecordingProgress()
    evaluator = Evaluator(eval_config(cache_dir), "cpu", features, progress=progress)
    try:
        evaluator(ema_model(trained), trained.schedule)
    finally:
        features.progress = None
    shown = [(t["description"], t["total"], t["done"], t["removed"]) for t in progress.tasks.values()]
    assert ("sampling", NUM_SAMPLES, NUM_SAMPLES, True) in shown
    assert ("Inception features", NUM_SAMPLES, NUM_SAMPLES, True) in shown


def test_no_progress_by_default(features, cache_dir):
    assert Evaluator(eval_config(cache_dir), "cpu", features).progress is None and features.progress is None
