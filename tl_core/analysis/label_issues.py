"""Likely label errors: images whose folder's class a linear model on their features doubts, ranked.

  1. Out-of-sample predicted probabilities (`out_of_sample_probs`): a linear model (logistic
     regression on the L2-normalised frozen features' first PCA_DIM principal components,
     `project` and `_model`) in k stratified folds over the
     images it may learn from (train and val): each image's probabilities come from the model fit
     on the other folds (`sklearn.model_selection.cross_val_predict`, method="predict_proba").
     The others (the test split) are scored by the model fit on all of train and val: the test
     split is read, never learnt from.
  2. Ranked by cleanlab's confident learning (`cleanlab.filter.find_label_issues`, its default
     filter, prune_by_noise_rate): the images it flags, most likely error first by
     self-confidence, the predicted probability of the folder's own label (`score`: lower is more
     likely wrong). Its `suggested` class is the likeliest other class.
Northcutt et al. 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

# lbfgs converges well inside this on thousands of images; past it, the fit is stopped (the
# ranking only needs the probabilities' order, not the last decimal).
MAX_ITER = 300
# L2 strength of the logistic regression on unit-length features. Unit length: the cosine geometry
# the near-copy search and the outliers use, and no per-feature scaling learnt from a few images
# (standardized, as the probe's, 1,280 features on tens of images a class fit to probabilities of
# 0 and 1, which rank nothing: on tests/test_data_check.py's folder, a real image outranked the
# flipped ones). Each unit vector's features are small (~1/sqrt(1280)), so C is above the default
# 1, which leaves the model near uniform: at C=10 the four flipped labels of that folder rank
# 1st, 2nd, 3rd and 5th, the 4th a noise image (at C=1: 1st, 2nd, 4th, 6th).
C = 10.0
# Principal components the model reads. A rotation of the centred unit vectors (the L2 penalty is
# the same in any rotation) with the directions of least variance dropped: lbfgs then costs
# 128/1280 of its time per step, which keeps the check of 10,000 images in seconds
# (bench/check_data.py); on tests/test_data_check.py's folder 32, 64 and all 1,280 components rank
# the flipped labels alike. Fit on the rows the model learns from (train and val), with no labels:
# out of sample in every sense the folds care about.
PCA_DIM = 128


@dataclass(frozen=True)
class LabelIssue:
    index: int  # the image's row in the features given
    suggested: int  # the likeliest class other than its label
    score: float  # the out-of-sample probability of its label (self-confidence): lower, likelier an error


def _model(seed: int) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)


def project(x: np.ndarray, learn: np.ndarray, seed: int) -> np.ndarray:
    """The rows of `x` at unit length, on the first PCA_DIM principal components of the `learn` rows."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = int(min(PCA_DIM, learn.sum(), x.shape[1]))
    return PCA(k, random_state=seed).fit(unit[learn]).transform(unit)


def out_of_sample_probs(
    x: np.ndarray, y: np.ndarray, learn: np.ndarray, num_classes: int, folds: int, seed: int
) -> np.ndarray:
    """(images, classes) probabilities, each from a model that never saw the image: k-fold over
    the rows where `learn` is True, the model fit on all of them for the others. Every class must
    have at least `folds` rows to learn from (data_check says so before)."""
    probs = np.zeros((len(x), num_classes), dtype=np.float64)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # One thread: each lbfgs step is a few milliseconds of work, which OpenMP and BLAS threads
    # slow down where another process holds a core (10,000 images on 2 shared cores: 1.5-2.6 s
    # on one thread, 25-28 s on two; bench/check_data.py).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # ConvergenceWarning past MAX_ITER: see MAX_ITER
        x = project(x, learn, seed)
        probs[learn] = cross_val_predict(_model(seed), x[learn], y[learn], cv=cv, method="predict_proba")
        if (~learn).any():
            probs[~learn] = _model(seed).fit(x[learn], y[learn]).predict_proba(x[~learn])
    return probs


def rank_label_issues(y: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """The images cleanlab flags as likely mislabelled, the most likely first (lowest self-confidence)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab's notes on small classes: the check counts them itself
        ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    others = probs.copy()
    others[np.arange(len(y)), y] = -1.0  # the suggestion is another class, even where the label is the argmax
    return [LabelIssue(int(i), int(others[i].argmax()), float(probs[i, y[i]])) for i in ranked]


def label_issues(
    x: np.ndarray, y: np.ndarray, learn: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> list[LabelIssue]:
    """Likely label errors among the rows of `x` (labels `y`), the model learning from `learn` rows only."""
    return rank_label_issues(y, out_of_sample_probs(x, y, learn, num_classes, folds, seed))
