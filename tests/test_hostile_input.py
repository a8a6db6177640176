"""Hostile and malformed sweep files and command lines: each is refused by validation (and so by --dry-run) with one
line naming the file and the key, exit 2, no traceback, within seconds; and what validation accepts, a run accepts:
every dimension is built as Optuna builds it and every combination the sweep can draw is checked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweep.launch import main

BASE = "name: x\ntrain: {max_steps: 300}\neval: {every_steps: 100}\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

HOSTILE = [
    ("duplicate key", "name: x\nname: y\n", "line 2, column 1: invalid YAML (duplicate key 'name' (first on line 1))"),
    ("duplicate nested key", "name: x\nmodel: {dropout: 0.1, dropout: 0.2}\n", "duplicate key 'dropout'"),
    ("alias bomb", ALIAS_BOMB, "once its aliases are expanded"),
    ("deep nesting", "name: x\nmodel: " + "[" * 100 + "]" * 100 + "\n", "nested more than 32 levels deep"),
    ("bool as int", "name: x\nsweep: {num_trials: true}\n", "sweep.num_trials: Input should be a valid integer"),
    ("string as bool", "name: x\ndata: {download: 'false'}\n", "data.download: Input should be a valid boolean"),
    ("log as a string", "name: x\nmodel: {dropout: {uniform: [0.0, 0.3], log: 'false'}}\n", "model.dropout.log: expected true or false"),
    ("nan", "name: x\ntrain: {lr: .nan}\n", "train.lr: Input should be a finite number"),
    ("infinite range", "name: x\ntrain: {lr: {uniform: [0.001, .inf]}}\n", "train.lr.uniform: expected [low, high], two finite numbers"),
    ("negative seed", "name: x\nsweep: {seed: -1}\n", "sweep.seed: Input should be greater than or equal to 0"),
    ("huge seed", "name: x\ntrain: {seed: 99999999999}\n", "train.seed: Input should be less than or equal to 4294967295"),
    ("name with a slash", "name: ../escape\n", "name: '../escape' is not a safe name"),
    ("name with a newline", 'name: "a\\nb"\n', "name: 'a\\nb' is not a safe name"),
    ("name with NUL", 'name: "a\\0b"\n', "is not a safe name"),
    ("name over 100 characters", f"name: {'n' * 300}\n", "is not a safe name"),
    ("experiment with a slash", "name: x\ntracking: {experiment: a/b}\n", "tracking.experiment: 'a/b' is not a safe name"),
    ("unknown home", "name: x\ndata: {root: ~nosuchuser/data}\n", "data.root: cannot expand '~nosuchuser'"),
    ("NUL in a path", 'name: x\nsweep: {storage_path: "a\\0b"}\n', "sweep.storage_path: a path must not contain NUL bytes"),
    ("grace beyond max_steps", BASE + "sweep: {scheduler: {grace_period: 500}}\n", "sweep.scheduler.grace_period: 500 steps is beyond train.max_steps 300"),
    ("max_steps searched", "name: x\ntrain: {max_steps: {choice: [100, 200]}}\n", "train.max_steps: cannot be a search dimension"),
    ("log range from 0", "name: x\nmodel: {dropout: {uniform: [0.0, 0.3], log: true}}\n", "model.dropout: not a distribution Optuna can sample"),
    ("int with a fractional step", "name: x\nmodel: {num_heads: {int: [1, 8], step: 1.5}}\n", "model.num_heads.step: step must be a whole number"),
    ("study: log from 0", "name: x\neval: {search: {eta: {uniform: [0.0, 1.0], log: true}}}\n", "eval.search.eta: not a distribution Optuna can sample"),
    ("study: step with loguniform", "name: x\neval: {search: {eta: {loguniform: [0.01, 1.0], step: 0.1}}}\n", "eval.search.eta: not a distribution Optuna can sample"),
    ("study: int with a fractional step", "name: x\neval: {search: {sampling_steps: {int: [10, 40], step: 2.5}}}\n", "eval.search.sampling_steps.step"),
    ("duplicate choice", "name: x\nmodel: {num_heads: {choice: [2, 2]}}\n", "model.num_heads.choice: a value is listed twice"),
    # combinations inside the space, not only each range's ends against the base config
    ("heads vs searched channels", "name: x\nmodel: {base_channels: {choice: [32, 48]}, channel_mult: [1], num_heads: {choice: [2, 32]}}\n",
     "num_heads=32 does not divide the 48 channels of a level (base_channels 48 x mult 1); pick a divisor "
     "(when model.base_channels = 48, model.num_heads = 32: a combination the sweep can draw)"),
    ("study steps vs searched T", "name: x\ndiffusion: {timesteps: {choice: [1000, 20]}}\neval: {sampling_steps: 10, search: {sampling_steps: {int: [10, 40]}}}\n",
     "(when diffusion.timesteps = 20, eval.sampling_steps = 21: a combination the sweep can draw)"),
    ("depth vs searched image size", "name: x\ndata: {image_size: {choice: [32, 8]}}\nmodel: {channel_mult: {choice: [[1, 2], [1, 2, 2, 2]]}}\n",
     "(when data.image_size = 8, model.channel_mult = [1, 2, 2, 2]: a combination the sweep can draw)"),
    ("conditional dimension", "name: x\ndiffusion: {schedule: {choice: [linear, cosine]}, timesteps: 50, cosine_s: {uniform: [0.01, 0.5], if: {diffusion.schedule: cosine}}}\n"
     "model: {num_heads: {choice: [1, 3], if: {diffusion.schedule: cosine}}, base_channels: 32, channel_mult: [1]}\n",
     "(when diffusion.schedule = 'cosine', model.num_heads = 3: a combination the sweep can draw)"),
]


@pytest.mark.parametrize("label,text,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_is_one_line_naming_file_and_key(tmp_path, capsys, label, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: ") and "Traceback" not in err, err
    assert expected in err, err


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real command line; the timeout is a hang guard (an alias bomb hung the old parser)."""
    return subprocess.run([sys.executable, "-m", "sweep.launch", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("label,content,expected", [
    ("50 MB file", b"name: x\n" + b"#" * 50_000_000, "larger than 1,000,000 bytes"),
    ("not UTF-8", b"name: \xff\xfe\n", "not UTF-8 text (byte 6)"),
    ("alias bomb", ALIAS_BOMB.encode(), "once its aliases are expanded"),
], ids=["big", "binary", "bomb"])
def test_hostile_file_from_the_command_line(tmp_path, label, content, expected):
    path = tmp_path / "space.yaml"
    path.write_bytes(content)
    proc = _launch(tmp_path, str(path), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"error: {path}: ") and expected in proc.stderr


@pytest.mark.parametrize("args,expected", [
    (["--storage-path", ""], "--storage-path: empty"),
    (["--num-trials", "0"], "sweep.num_trials: Input should be greater than or equal to 1"),
    (["--set", "sweep.seed=-5"], "sweep.seed: Input should be greater than or equal to 0"),
    (["--set", "train.lr=1e-4", "--set", "model.dropout=.nan"], "model.dropout: Input should be a finite number"),
    (["--set", "=3"], "expected key.path=value"),
    (["--set", "model..dropout=0.1"], "expected key.path=value"),
    (["--set", "name=a/b"], "name: 'a/b' is not a safe name"),
])
def test_hostile_command_line_values(tmp_path, capsys, args, expected):
    path = tmp_path / "space.yaml"
    path.write_text(BASE)
    assert main([str(path), "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and expected in err, err


def test_space_path_with_a_nul_byte_or_unknown_home(capsys):
    assert main(["a\x00b.yaml", "--dry-run"]) == 2
    assert "a path must not contain NUL bytes" in capsys.readouterr().err
    assert main(["~nosuchuser/space.yaml", "--dry-run"]) == 2
    assert "cannot expand '~nosuchuser'" in capsys.readouterr().err


def test_yaml_12_floats_are_numbers(tmp_path, capsys):
    """PyYAML reads 1e-4 as a string (YAML 1.1); strict types would then refuse a learning rate written as in every paper."""
    path = tmp_path / "space.yaml"
    path.write_text("name: x\ntrain: {lr: {loguniform: [1e-5, 1e-3]}, weight_decay: 1e-2}\n")
    assert main([str(path), "--dry-run"]) == 0
    assert "train.lr: loguniform [1e-05, 0.001]" in capsys.readouterr().out
