"""How well a pretrained model's outputs suit a labelled target set, before any training: LogME, LEEP.

Both read what a frozen model gives for the target's training images and score it; the higher, the
better fine-tuning that model is expected to do on the target. Pure numpy: `backbone_ranking.py`
computes the features and the source-label probabilities.

**LogME** (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021). For each target class c, the indicator y (n,) of its images is modelled as
y = F w + e over the features F (n x D), w ~ N(0, 1/alpha I), e ~ N(0, 1/beta I). The evidence
p(y | F, alpha, beta) = N(y | 0, I/beta + F F^T/alpha) has a closed form; it is maximised over alpha
and beta by MacKay's fixed-point updates, with A = alpha I + beta F^T F, m = beta A^-1 F^T y and
gamma = sum_i beta sigma_i / (alpha + beta sigma_i) (sigma_i: the eigenvalues of F^T F):
    alpha <- gamma / |m|^2,    beta <- (n - gamma) / |F m - y|^2,
each step O(k) over the singular values of F, computed once (the paper's Algorithm 1). LogME is the
maximum log evidence per image, averaged over the classes:
    L = n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log|A|.

Where this departs from the authors' reference code (github.com/thuml/LogME, LogME.py, whose default
is the fixed-point form `_fit_fixed_point` of their JMLR 2022 extension):
  - log|A| counts all D eigenvalues of A, the D - k of F^T F's null space as log alpha each
    (k = rank F). The reference's fixed-point form sums over the k nonzero singular values only
    while keeping D/2 log alpha, which adds (D - k)/2 log alpha to the evidence: with fewer images
    than feature dimensions (n < D, the usual case here: 1280 features, tens of images a class)
    its number is not the evidence, and depends on alpha, so on the features' scale. Here the
    evidence equals the Gaussian log-density above at the returned alpha, beta (tested).
  - The features are divided by their largest singular value first. The evidence's maximum is
    unchanged (alpha absorbs any scale), and the guards against dividing by zero then mean the
    same for every backbone; the reference adds 1e-5 to both denominators whatever the scale.
  - The iteration runs to a relative change of alpha/beta below 1e-7 (at most 1000 steps), and
    the evidence is computed from m at the final alpha, beta; the reference stops after 11 steps
    or a 1e-3 change, and evaluates the evidence with the previous step's m.
  - With as many independent features as images (rank F = n, so whenever n <= D), the labels can
    be fitted without noise and the maximum may lie at beta -> infinity, which the steps approach
    without reaching (beta grows about tenfold a step). There the limit is taken in closed form,
    the evidence of N(y | 0, F F^T / alpha) at its best alpha; the reference reports wherever its
    11 steps stopped.
  - Classes are those present in the labels; the reference scores every integer up to the
    largest label, an absent class included.
  - Rank k: singular values above numpy's matrix_rank tolerance; the reference keeps those above 1e-10.

**LEEP** (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020). With theta(x) the source model's softmax over its own labels z
(ImageNet's 1000 classes), the empirical joint P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z gives
P(y | z) = P(y, z) / P(z); the "expected empirical predictor" p(y | x) = sum_z P(y | z) theta(x)_z, and
LEEP = 1/n sum_i log p(y_i | x_i): an average log-likelihood, at most 0. It needs the source model's
head (backbones with ImageNet weights only). As in the reference code's LEEP.py, but in float64 and
with a source class that no image gives any probability (P(z) = 0 after underflow) left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClassEvidence", "class_evidence", "leep", "logme", "softmax"]

_TOLERANCE = 1e-7  # relative change of alpha / beta at which the fixed point counts as reached
_MOST_STEPS = 1000  # each step is O(rank): a bound that is never the cost
_SETTLED = 1e-10  # or a change of the evidence per image below this
_NEAR_LIMIT = 1e-6  # or the evidence this close below the noiseless limit (k = n), which is then returned
_ROUNDING = 1e-10  # a share of |y|^2 outside the features' span below this is rounding
_TINY = 1e-12  # |m|^2 and |F m - y|^2 floors, for features scaled to a largest singular value of 1


@dataclass(frozen=True)
class ClassEvidence:
    """One class's maximised evidence, and where the fixed point put alpha and beta."""

    evidence: float  # the maximum log evidence per image
    alpha: float  # the weights' precision
    beta: float  # the noise's precision
    steps: int  # fixed-point steps taken
    converged: bool  # alpha / beta, or the evidence, stopped changing before _MOST_STEPS


def _checked(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or len(f) != len(y):
        raise ValueError(f"features (n, D) and labels (n,) must agree: got {f.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("scoring transferability needs images of at least two classes")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity")
    return f, y


def _spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U's first k columns and F^T F's nonzero eigenvalues sigma (k = rank F), F scaled to |F|_2 = 1."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if not len(s) or s[0] == 0:
        return u[:, :0], s[:0]
    keep = s > s[0] * max(f.shape) * np.finfo(np.float64).eps  # numpy's matrix_rank tolerance
    return u[:, keep], (s[keep] / s[0]) ** 2


def class_evidence(u: np.ndarray, sigma: np.ndarray, y: np.ndarray, dims: int) -> ClassEvidence:
    """The maximum log evidence per image of targets `y` (n,) over features whose SVD is U (n, k)
    and sigma (k,) (F^T F's nonzero eigenvalues) in `dims` dimensions; alpha, beta at the maximum.

    In the SVD's basis everything is a sum over k: with z = U^T y and t = alpha / beta,
    |m|^2 = sum sigma z^2 / (sigma + t)^2 and |F m - y|^2 = sum (t / (sigma + t))^2 z^2 + |y|^2 - |z|^2.
    With fewer images than dimensions the maximum may lie at beta -> infinity (labels fitted without
    noise, when k = n): beta then grows step by step towards it, and that limit, in closed form, is
    returned (beta infinite) where it is the larger.
    """
    n, k = len(y), len(sigma)
    z2 = (u.T @ y) ** 2
    outside = float(y @ y - z2.sum())  # the part of y no feature reaches (rounding's alone: none)
    outside = outside if outside > _ROUNDING * float(y @ y) else 0.0

    def at(alpha: float, beta: float) -> tuple[float, float, float, float]:
        """The evidence per image at alpha, beta, and gamma, |m|^2, |F m - y|^2 there."""
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())  # the well-determined parameters
        m2 = float((sigma * z2 / (sigma + t) ** 2).sum())
        res2 = float(((t / (sigma + t)) ** 2 * z2).sum()) + outside
        # log|A| = sum over k of log(alpha + beta sigma) + (dims - k) log alpha, so
        # D/2 log alpha - 1/2 log|A| leaves k/2 log alpha.
        evidence = (
            n / 2 * np.log(beta)
            + k / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * res2
            - alpha / 2 * m2
            - 0.5 * float(np.log(alpha + beta * sigma).sum())
        )
        return float(evidence) / n, gamma, m2, res2

    if not k:  # no features at all: y is noise alone, beta its precision; alpha drops out
        beta = n / max(outside, _TINY)
        return ClassEvidence(at(1.0, beta)[0], float("inf"), beta, 0, True)
    # As many independent features as images (k = n): y is fitted exactly as beta -> infinity, where
    # the evidence tends to that of N(y | 0, F F^T / alpha), largest at alpha = k / sum(z^2 / sigma).
    noiseless = k == n and not outside
    limit, limit_alpha = -np.inf, float("nan")
    if noiseless:
        limit_alpha = k / float((z2 / sigma).sum())
        limit = float(k / 2 * np.log(limit_alpha) - n / 2 * np.log(2 * np.pi) - k / 2 - 0.5 * np.log(sigma).sum()) / n
    alpha, beta, steps, settled = 1.0, 1.0, 0, False
    evidence, gamma, m2, res2 = at(alpha, beta)
    while not settled and steps < _MOST_STEPS:
        t = alpha / beta
        alpha, beta = gamma / max(m2, _TINY), (n - gamma) / max(res2, _TINY)
        before, (evidence, gamma, m2, res2) = evidence, at(alpha, beta)
        steps += 1
        settled = (
            abs(alpha / beta - t) < _TOLERANCE * t
            or abs(evidence - before) < _SETTLED
            or (noiseless and limit - evidence < _NEAR_LIMIT)  # on its way to the noiseless limit
        )
    if limit > evidence:  # the maximum is the noiseless limit, which the steps only approach
        return ClassEvidence(limit, limit_alpha, float("inf"), steps, True)
    return ClassEvidence(evidence, alpha, beta, steps, settled)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features (n, D) for class labels (n,): the maximum log evidence per image of a
    Bayesian linear model from the features to each class's indicator, averaged over the classes."""
    f, y = _checked(features, labels)
    u, sigma = _spectrum(f)
    per_class = [class_evidence(u, sigma, (y == c).astype(np.float64), f.shape[1]) for c in np.unique(y)]
    return float(np.mean([e.evidence for e in per_class]))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for any logits."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of the source model's label probabilities (n, Z; rows summing to 1) for target labels (n,)."""
    theta, y = _checked(source_probs, labels)
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be probabilities: non-negative rows that sum to 1 (a softmax)")
    classes, target = np.unique(y, return_inverse=True)
    n = len(y)
    joint = np.zeros((len(classes), theta.shape[1]))
    np.add.at(joint, target, theta / n)  # P(y, z)
    source = joint.sum(axis=0)  # P(z)
    given = np.divide(joint, source, out=np.zeros_like(joint), where=source > 0)  # P(y | z)
    expected = (theta @ given.T)[np.arange(n), target]  # p(y_i | x_i) of the expected empirical predictor
    return float(np.mean(np.log(expected)))
