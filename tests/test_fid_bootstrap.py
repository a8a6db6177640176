"""The rung FID's bootstrap standard deviation: the low-rank resampling reproduces FID itself, the noise falls with
more samples, and it is left unestimated above a sample count."""
import numpy as np
import pytest

from diffusion_core.fid_bootstrap import fid_std, resampled_fids
from diffusion_core.metrics import ReferenceStats, feature_statistics, fid_kid, frechet_distance


@pytest.fixture(scope="module")
def reference():
    feats = np.random.default_rng(0).normal(size=(300, 64))
    mu, sigma = feature_statistics(feats)
    return ReferenceStats(mu, sigma, feats.astype(np.float32), {})


def samples(n, seed=1):
    return np.random.default_rng(seed).normal(0.3, 1.2, size=(n, 64))


def test_the_identity_resample_is_the_fid_and_a_resample_equals_fid_of_the_resampled_rows(reference):
    feats = samples(40)
    fids = resampled_fids(feats, reference, replicates=3, seed=7)
    assert fids[0] == pytest.approx(fid_kid(feats, reference, 10)["fid"], rel=1e-9)
    idx = np.random.default_rng(7).integers(0, 40, 40)  # the first resample drawn with that seed
    mu, sigma = feature_statistics(feats[idx])
    assert fids[1] == pytest.approx(frechet_distance(mu, sigma, reference.mu, reference.sigma), rel=1e-6)


def test_the_noise_is_positive_seeded_and_falls_with_more_samples(reference):
    small, large = fid_std(samples(20), reference), fid_std(samples(120), reference)
    assert 0 < large < small
    assert fid_std(samples(20), reference, seed=3) == fid_std(samples(20), reference, seed=3)


def test_above_max_samples_it_is_not_estimated(reference):
    assert np.isnan(fid_std(samples(30), reference, max_samples=20))
