"""Validation of search-space files: every bad file is one line naming the file and key, exit 2,
no traceback, and Ray never starts."""
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_core.config import ConfigError
from sweep.config import load_sweep, parse_sweep
from sweep.launch import main
from sweep.space import sample_configs

REPO = Path(__file__).resolve().parents[1]

BAD_FILES = [
    ("syntax", "name: x\nmodel: {dropout: [0.1\n", "invalid YAML"),
    ("top-level list", "- a\n- b\n", "expected a mapping"),
    ("unknown section", "name: x\nmodle: {}\n", "modle: unknown key"),
    ("unknown key", "name: x\nmodel: {dropuot: 0.1}\n", "model.dropuot: unknown key"),
    ("wrong type", "name: x\ntrain: {batch_size: lots}\n", "train.batch_size"),
    ("empty choice", "name: x\nmodel: {num_heads: {choice: []}}\n", "model.num_heads.choice: expected a non-empty list"),
    ("inverted range", "name: x\nmodel: {dropout: {uniform: [0.3, 0.1]}}\n", "model.dropout.uniform: low 0.3 must be below high 0.1"),
    ("equal bounds", "name: x\ntrain: {lr: {loguniform: [0.001, 0.001]}}\n", "train.lr.loguniform"),
    ("loguniform zero", "name: x\ntrain: {lr: {loguniform: [0, 0.01]}}\n", "train.lr.loguniform: bounds must be > 0"),
    ("loguniform negative", "name: x\ntrain: {lr: {loguniform: [-1, 0.01]}}\n", "train.lr.loguniform: bounds must be > 0"),
    ("two kinds", "name: x\nmodel: {dropout: {uniform: [0, 0.1], choice: [0.1]}}\n", "exactly one of"),
    ("int with floats", "name: x\ndiffusion: {timesteps: {int: [10.5, 100]}}\n", "diffusion.timesteps.int: int bounds"),
    ("T below 2", "name: x\ndiffusion: {timesteps: 1}\n", "diffusion.timesteps"),
    ("T below 2 in a choice", "name: x\ndiffusion: {timesteps: {choice: [1000, 1]}}\n", "when diffusion.timesteps = 1"),
    ("unknown schedule", "name: x\ndiffusion: {schedule: {choice: [linear, quadratic]}}\n", "diffusion.schedule"),
    ("unknown sampler", "name: x\neval: {sampler: euler}\n", "eval.sampler"),
    ("heads do not divide", "name: x\nmodel: {base_channels: 16, num_heads: {choice: [2, 3]}}\n", "num_heads=3 does not divide"),
    ("negative dropout", "name: x\nmodel: {dropout: {uniform: [-0.1, 0.2]}}\n", "model.dropout"),
    ("ema rate 1", "name: x\ntrain: {ema_rates: {choice: [0.999, 1.0]}}\n", "train.ema_rates"),
    ("absurd resources", "name: x\nsweep: {resources_per_trial: {cpu: 100000}}\n", "sweep.resources_per_trial.cpu"),
    ("python object tag", "name: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ("condition on unknown", "name: x\ndiffusion: {cosine_s: {uniform: [0.001, 0.01], if: {diffusion.shedule: cosine}}}\n", "diffusion.cosine_s.if"),
    ("condition never true", "name: x\ndiffusion: {schedule: {choice: [linear]}, cosine_s: {uniform: [0.001, 0.01], if: {diffusion.schedule: cosine}}}\n", "never takes the value"),
    ("missing name", "model: {dropout: 0.1}\n", "name: Field required"),
    ("sampling steps above T", "name: x\ndiffusion: {timesteps: 50}\neval: {sampling_steps: 100}\n", "exceeds diffusion.timesteps"),
    ("ema rate out of range", "name: x\ntrain: {ema_rates: [0.999, 1.5]}\n", "train.ema_rates: every EMA rate must be in (0, 1)"),
    ("duplicate ema rates", "name: x\ntrain: {ema_rates: [0.999, 0.999]}\n", "train.ema_rates: duplicate EMA rates"),
    ("sampling search unknown key", "name: x\neval: {search: {samplr: {choice: [ddim]}}}\n", "eval.search.samplr: unknown key"),
    ("sampling search fixed value", "name: x\neval: {search: {eta: 0.5}}\n", "eval.search.eta: expected a search dimension"),
    ("sampling search without dimensions", "name: x\neval: {search: {trials: 4}}\n", "eval.search: declares no sampling dimension"),
    ("sampling search zero trials", "name: x\neval: {search: {trials: 0, eta: {uniform: [0, 1]}}}\n", "eval.search.trials"),
    ("sampling steps above T in search", "name: x\ndiffusion: {timesteps: 50}\neval: {search: {sampling_steps: {int: [10, 80]}}}\n",
     "when eval.sampling_steps = 79: a combination the sweep can draw"),
    ("sampling dimension twice", "name: x\neval: {eta: {uniform: [0, 1]}, search: {eta: {uniform: [0, 1]}}}\n",
     "eval.search.eta: eval.eta is already a training dimension"),
]


@pytest.mark.parametrize("label,text,expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_gives_one_line_naming_file_and_key(tmp_path, capsys, label, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: {path}:"), err
    assert expected in err, err
    assert "Traceback" not in err


def test_bad_file_from_the_command_line_exits_2_without_starting_ray(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: x\nmodel: {num_heads: {choice: []}}\n")
    proc = subprocess.run([sys.executable, "-m", "sweep.launch", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}: model.num_heads.choice: expected a non-empty list of values"]
    assert "ray" not in proc.stdout.lower()
    assert not (tmp_path / "runs").exists()


def test_missing_file_is_a_clear_error(capsys):
    assert main(["/nonexistent/space.yaml"]) == 2
    assert "cannot read the file" in capsys.readouterr().err


@pytest.mark.parametrize("space", ["cifar", "mnist", "smoke"])
def test_dry_run_of_shipped_spaces_works_offline(space, capsys):
    assert main([str(REPO / "search_spaces" / f"{space}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for dim in ["diffusion.schedule", "diffusion.timesteps", "train.lr", "model.dropout", "model.num_heads"]:
        assert dim in out
    assert "ema_rates" in out  # a dimension (smoke) or an EMA bank evaluated at every rung (cifar, mnist)


def test_conditional_dimension_only_sampled_when_its_condition_holds():
    cfg = load_sweep(REPO / "search_spaces" / "cifar.yaml")
    configs = sample_configs(cfg.dimensions, 30, seed=1)
    for params in configs:
        assert ("diffusion.cosine_s" in params) == (params["diffusion.schedule"] == "cosine")
        cfg.run_config(params)
    assert {p["diffusion.schedule"] for p in configs} == {"linear", "cosine"}


def test_set_override_and_list_choices():
    raw = {"name": "x", "model": {"channel_mult": {"choice": [[1, 2], [1, 2, 2]]}}}
    cfg = parse_sweep(raw, "inline.yaml")
    params = sample_configs(cfg.dimensions, 10, seed=0)
    assert {tuple(p["model.channel_mult"]) for p in params} == {(1, 2), (1, 2, 2)}
    with pytest.raises(ConfigError, match="heads"):
        load_sweep(REPO / "search_spaces" / "smoke.yaml", ["model.num_heads=3"])


def test_learn_sigma_is_a_searchable_choice():
    cfg = parse_sweep({"name": "x", "diffusion": {"learn_sigma": {"choice": [False, True]}}})
    (dim,) = cfg.dimensions
    assert dim.path == "diffusion.learn_sigma" and dim.choices == [False, True]
    assert cfg.run_config({"diffusion.learn_sigma": True}).diffusion.learn_sigma is True
    sampled = {p["diffusion.learn_sigma"] for p in sample_configs(cfg.dimensions, 8, 0)}
    assert sampled == {False, True}
    with pytest.raises(ConfigError, match="diffusion.learn_sigma"):
        parse_sweep({"name": "x", "diffusion": {"learn_sigma": {"choice": [False, "maybe"]}}})
