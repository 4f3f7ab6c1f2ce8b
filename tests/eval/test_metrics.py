"""mvrag_jax/eval/metrics.py against closed forms and a scipy reference."""

import numpy as np
import pytest
import scipy.linalg

from mvrag_jax.eval import metrics


def test_identical_embeddings_have_similarity_100():
    x = np.random.default_rng(0).normal(size=(4, 16))
    assert metrics.similarity_x100(x[:1].repeat(3, 0), x[:1]) == pytest.approx(100.0, abs=1e-9)
    assert metrics.similarity_x100(x, -x[:1].repeat(2, 0)) < 100.0


def test_similarity_is_the_mean_over_all_pairs():
    a, b = np.eye(3)[:2], np.eye(3)[[0, 2]]  # pairs: (0,0)=1, (0,2)=0, (1,0)=0, (1,2)=0
    assert metrics.similarity_x100(a, b) == pytest.approx(25.0)


def test_view_consistency_is_cyclic_neighbours():
    views = np.eye(4)[[0, 0, 1, 1]]  # neighbours (0,1)=1 (1,2)=0 (2,3)=1 (3,0)=0
    assert metrics.view_consistency_x100(views) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="at least 2 views"):
        metrics.view_consistency_x100(views[:1])


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's formula with scipy's general sqrtm (the reference)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(50, 8))
    assert abs(metrics.fid(x, x)) < 1e-9


def test_fid_matches_scipy_reference():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 6))
    b = rng.normal(loc=0.5, scale=1.5, size=(30, 6)) @ rng.normal(size=(6, 6))
    ours = metrics.fid(a, b)
    assert ours > 1.0
    assert ours == pytest.approx(scipy_frechet(a, b), rel=1e-9, abs=1e-9)


def test_inception_score_of_identical_predictions_is_one():
    logits = np.tile(np.random.default_rng(3).normal(size=(1, 10)), (20, 1))
    assert metrics.inception_score(logits) == pytest.approx(1.0, abs=1e-9)


def test_inception_score_is_bounded_by_the_class_count():
    classes = 8
    one_hot = np.eye(classes)[np.arange(64) % classes] * 50.0  # confident and uniform over classes: IS -> classes
    score = metrics.inception_score(one_hot, splits=1)
    assert classes - 1e-6 < score + 1e-3 and score <= classes + 1e-9
    random = metrics.inception_score(np.random.default_rng(4).normal(size=(64, classes)) * 3, splits=4)
    assert 1.0 < random < classes


def test_bootstrap_ci_brackets_the_mean():
    values = np.random.default_rng(5).normal(10, 1, size=100)
    low, high = metrics.bootstrap_ci(values)
    assert low < values.mean() < high and high - low < 1.0
    assert metrics.bootstrap_ci(values[:1]) is None
