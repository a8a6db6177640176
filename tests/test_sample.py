"""`python -m sweep.sample`: N PNGs and one uint8 (N, H, W, 3) `.npz` from a model file, the same for the same
seed, continued after an interruption by drawing only the batches with a missing PNG, and one-line errors.
(A registered model and a run id as MODEL: tests/test_registry.py resolves them, tests/test_finalize.py samples
the smoke sweep's champion.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_model_file
from PIL import Image

from sweep.sample import ARRAY, MANIFEST, main


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("sample") / "model.pt")


def sample(model_file, out, *flags: str) -> int:
    return main([str(model_file), "--num", "10", "--out", str(out), "--batch-size", "4", "--device", "cpu", *flags])


def test_writes_n_pngs_and_an_npz_of_them(model_file, tmp_path, capsys):
    assert sample(model_file, tmp_path / "a") == 0
    pngs = sorted((tmp_path / "a").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(10)]
    array = np.load(tmp_path / "a" / ARRAY)["arr_0"]
    assert array.shape == (10, 8, 8, 3) and array.dtype == np.uint8
    assert all(np.array_equal(np.asarray(Image.open(p)), image) for p, image in zip(pngs, array, strict=True))
    assert len({image.tobytes() for image in array}) == 10, "every sample its own noise"
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert (manifest["num"], manifest["seed"], manifest["batch_size"], manifest["sampling"]["sampling_steps"]) == (10, 0, 4, 5)
    assert "10 samples (10 drawn now)" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_images_and_another_seed_others(model_file, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert sample(model_file, tmp_path / name, "--seed", seed) == 0
    a, b, c = (np.load(tmp_path / name / ARRAY)["arr_0"] for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_an_interrupted_run_draws_only_the_batches_it_lacks(model_file, tmp_path, capsys):
    out = tmp_path / "a"
    assert sample(model_file, out) == 0
    complete = np.load(out / ARRAY)["arr_0"]
    for name in ("000005.png", "000009.png", ARRAY):  # lost from batches 1 (images 4-7) and 2 (8-9)
        (out / name).unlink()
    capsys.readouterr()
    assert sample(model_file, out) == 0
    assert "10 samples (6 drawn now)" in capsys.readouterr().out
    assert np.array_equal(np.load(out / ARRAY)["arr_0"], complete)


def test_continuing_with_other_flags_is_refused_in_one_line(model_file, tmp_path, capsys):
    assert sample(model_file, tmp_path / "a") == 0
    capsys.readouterr()
    assert sample(model_file, tmp_path / "a", "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out {tmp_path / 'a'}: holds samples of other settings: seed 0 (now 3)") and "\n" not in err


@pytest.mark.parametrize("flags, code, message", [
    (["--num", "0"], 2, "error: --num 0 / --batch-size 4: both must be at least 1"),
    (["--model", "missing/model.pt"], 1, "error: missing/model.pt: checkpoint file not found"),
])
def test_bad_flags_and_a_missing_model_are_one_line(model_file, tmp_path, capsys, flags, code, message):
    argv = [str(model_file), "--num", "10", "--out", str(tmp_path), "--batch-size", "4"]
    if flags[0] == "--model":
        argv[0] = flags[1]
    else:
        argv += flags
    assert main(argv) == code
    assert capsys.readouterr().err.strip() == message
