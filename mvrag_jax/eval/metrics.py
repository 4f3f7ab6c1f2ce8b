"""The numbers of an evaluation, as pure numpy functions of embeddings, features and logits.

* image-image similarity x 100 (CLIP, DINOv2): mean cosine similarity over every (generated view, reference image)
  pair of one prompt, times 100; the dataset figure is the mean over prompts.
* multi-view consistency x 100: mean DINOv2 cosine similarity of neighbouring views (i, i + 1 mod n: the views ring
  the object at equal azimuth steps, so the last view neighbours the first).
* FID: Fréchet distance between Gaussians fitted to Inception pool3 features of the generated views and the
  reference images (each set's mean and unbiased covariance, as pytorch-fid).
* Inception Score: exp(E_x KL(p(y|x) || p(y))) over the softmax of the 1008 Inception logits, averaged over
  `splits` chunks (the usual protocol uses 10; fewer samples than splits -> one split).
* bootstrap 95 % confidence interval of a per-prompt mean (percentile method, fixed seed).
"""

import numpy as np
from mvrag_jax.errors import UsageError


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity_x100(generated: np.ndarray, references: np.ndarray) -> float:
    """Mean cosine similarity x 100 of every generated embedding [n, d] with every reference embedding [m, d]."""
    if len(generated) == 0 or len(references) == 0:
        raise UsageError(f"similarity needs at least one generated and one reference embedding, got "
                         f"{len(generated)} and {len(references)}")
    return float(100.0 * (_unit(generated) @ _unit(references).T).mean())


def view_consistency_x100(views: np.ndarray) -> float:
    """Mean cosine similarity x 100 of neighbouring view embeddings [n, d] (cyclic; n >= 2)."""
    if len(views) < 2:
        raise UsageError(f"multi-view consistency needs at least 2 views, got {len(views)}")
    unit = _unit(views)
    pairs = [(i, (i + 1) % len(unit)) for i in range(len(unit) if len(unit) > 2 else 1)]
    return float(100.0 * np.mean([unit[i] @ unit[j] for i, j in pairs]))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], unbiased covariance [d, d]) of features [n, d], in float64; n >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise UsageError(f"FID needs features [n >= 2, d], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from round-off clamp to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the same eigenvalues, but the argument is
    symmetric PSD, so two eigendecompositions replace pytorch-fid's general sqrtm and its complex round-off.
    """
    root1 = _psd_sqrt(sigma1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0.0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets [n, d], [m, d]."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = 10) -> float:
    """exp(mean KL(p(y|x) || p(y))) of logits [n, classes], averaged over `splits` equal chunks (min(splits, n))."""
    probs = softmax(logits)
    if probs.ndim != 2 or len(probs) == 0:
        raise UsageError(f"Inception Score needs logits [n >= 1, classes], got shape {probs.shape}")
    scores = []
    for chunk in np.array_split(probs, min(splits, len(probs))):
        marginal = chunk.mean(axis=0, keepdims=True)
        kl = (chunk * (np.log(np.clip(chunk, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (None for fewer than 2 values)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
