"""The model in MLflow's Model Registry: a model file logged as a pyfunc model into its run, registered under a
name with its scores and sweep as tags and the alias `champion`, loaded back with `mlflow.pyfunc.load_model` (the
project and MLflow only) and resolved to a local model file from a registry URI, a run id or a path."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from helpers import tiny_model_file
from mlflow.tracking import MlflowClient

from diffusion_core.checkpoint import CheckpointError, load_model
from sweep.artifacts import CHECKPOINTS
from sweep.generate import load_sampler
from sweep.registry import CHAMPION, register, resolve_model, with_sampling
from sweep.tracking import TrackingError, open_tracker

SAMPLING = {"eval.sampler": "ddpm", "eval.sampling_steps": 7, "eval.eta": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with one run that holds a model file as a trial does, and that file registered twice."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = open_tracker(uri)
    run = tracker.trial_run(tracker.experiment("reg"), "parent0", "trial0", "trial 0", {}, {"sampling_best": json.dumps(SAMPLING)})
    model_file = tiny_model_file(folder / "checkpoint_best.pt")
    run.log_file(model_file, CHECKPOINTS)
    first = register(tracker, run.run_id, model_file, "reg", {"sweep": "reg", "role": "trial"})
    second = register(tracker, run.run_id, model_file, "reg", {"sweep": "reg", "role": "final"}, alias=CHAMPION)
    return uri, tracker, run.run_id, model_file, first, second


def test_versions_carry_scores_and_sweep_and_the_alias_marks_the_champion(store):
    uri, _, run_id, _, first, second = store
    assert (first.version, second.version, second.uri) == ("1", "2", "models:/reg/2")
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("reg", CHAMPION)
    assert str(champion.version) == "2" and champion.run_id == run_id
    assert {k: champion.tags[k] for k in ("sweep", "role", "fid", "kid", "fid_num_samples", "step", "ema_rate")} == {
        "sweep": "reg", "role": "final", "fid": "123.4", "kid": "0.05", "fid_num_samples": "32", "step": "40", "ema_rate": "0.99"}
    assert client.get_model_version("reg", "1").aliases == []


def test_the_champion_loads_with_pyfunc_and_draws_images_for_a_seed(store, monkeypatch):
    uri, *_ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/reg@{CHAMPION}")
    images = model.predict({"num_samples": 6, "seed": 3})
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert np.array_equal(images, model.predict({"num_samples": 6, "seed": 3}))
    assert not np.array_equal(images, model.predict({"num_samples": 6, "seed": 4}))
    assert np.array_equal(images[..., 0], images[..., 2]), "a grey model's channel repeated"
    assert tuple(model.metadata.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 8, 8, 3)


def test_predict_draws_what_the_sampler_draws_for_the_same_seed(store, tmp_path):
    uri, tracker, *_ = store
    path = resolve_model(f"models:/reg@{CHAMPION}", uri, tmp_path)
    sampler = load_sampler(str(path), "cpu")
    assert np.array_equal(sampler.draw(5, seed=1, batch_size=2), load_sampler(str(path), "cpu").draw(5, seed=1, batch_size=2))
    assert sampler.draw(5, seed=1, batch_size=2).shape == (5, 8, 8, 3)


def test_a_run_id_resolves_to_its_best_model_with_its_best_sampling_settings(store, tmp_path):
    uri, _, run_id, model_file, *_ = store
    _, cfg, info = load_model(resolve_model(run_id, uri, tmp_path))
    assert (cfg.eval.sampler, cfg.eval.sampling_steps) == ("ddpm", 7) and info["sampling"] == SAMPLING
    assert resolve_model(str(model_file), uri, tmp_path) == model_file
    assert with_sampling(model_file, None, tmp_path / "unused.pt") == model_file


@pytest.mark.parametrize("name, error, message", [
    ("models:/reg@nobody", TrackingError, "models:/reg@nobody: no such model in sqlite:///"),
    ("0123456789abcdef0123456789abcdef", TrackingError, "0123456789abcdef0123456789abcdef: no such run in sqlite:///"),
    ("runs/missing.pt", CheckpointError, "runs/missing.pt: checkpoint file not found"),
])
def test_what_names_no_model_is_one_line(store, tmp_path, name, error, message):
    uri, *_ = store
    with pytest.raises(error) as raised:
        resolve_model(name, uri, tmp_path)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_missing_store_is_one_line(tmp_path):
    with pytest.raises(TrackingError, match="--tracking-uri: no MLflow store at sqlite:///.*; pass --tracking-uri"):
        resolve_model("0123456789abcdef0123456789abcdef", f"sqlite:///{tmp_path / 'none.db'}", tmp_path)
