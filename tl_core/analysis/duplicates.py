"""Duplicates in a dataset: exact copies by content; near copies by their pixels or their embeddings.

  - exact: the same bytes (a BLAKE2b digest of each file, `file_digest`), whatever the name;
  - near, by pixels: the cosine similarity of two images' pixel descriptors (pixel_hash.py: the
    lowest frequencies of the grey image's DCT, pHash's numbers) at or above `PIXEL_AT`: what
    re-encoding, resizing, brightening and contrast leave in place;
  - near, by embeddings: the cosine similarity of two images' L2-normalised frozen embeddings (the
    body's output at the head input, data_probe.frozen_activations) at or above `NEAR_AT`: copies
    the pixels no longer show (a crop, a flip, a heavier edit), and look-alikes.
A pair is a near copy when either measure reaches its threshold.
Pairs are found by normalised matrix products in blocks of rows (`near_pairs`: no Python loop over
pairs; 10,000 x 1,280 features take a few seconds, bench/check_data.py), then joined into groups
(connected components, `groups`): a group's similarities are its weakest links.

Both thresholds are calibrated on the demo data (`python bench/check_data.py --calibrate`): 300 images
of each set (30 a class, 96 px PNGs), each copied seven ways (JPEG quality 75 and 50, 10% and 20%
brighter, 20% darker, contrast +20%, 3/4 size), seen as the check sees them (efficientnet_lite0,
ImageNet weights, 224 px for the embeddings): the share of the copies at or above a threshold, and
how many of the 44,850 pairs of distinct images (any class) are.
PIXEL_AT = 0.993 finds every copy of the seven kinds in both sets, and no pair of distinct images:
                lowest copy (of each kind)                          highest distinct pair
                q75    q50    +10%   +20%   -20%   contrast  3/4    of 300   of 1,000 (100 a class)
    animals    1.000  1.000  0.999  0.996  1.000  0.998     0.998  0.981    0.986
    digits     1.000  1.000  0.998  0.994  1.000  0.998     1.000  0.981    0.993 (the 1s)
  (at 0.994, 99.3% of the digits' +20% copies; at 0.992, the same as 0.993.) The closest distinct
  pairs grow with the folder: a burst of one scene may reach it, as a copy would.
NEAR_AT = 0.95, on the embeddings alone (animals):
            q75   q50   +10%   +20%   -20%   contrast  3/4    distinct pairs at or above (of 44,850)
    0.93    96%   90%   99%    95%     99%   96%       100%   25
    0.94    90%   78%   98%    92%     99%   92%       100%    7
    0.95    82%   62%   96%    85%     98%   85%       100%    1 (the highest: 0.950)
    0.96    64%   40%   93%    72%     93%   68%       100%    0
  At 0.94 the distinct look-alikes start to chain: in tests/test_data_check.py's folder, six
  different bear silhouettes in one pose joined one group at 0.941.
  digits (8x8 scans upscaled 12x) cannot be calibrated this way on embeddings: distinct images of
  one digit reach 0.983, above most of their copies (424 of 44,850 distinct pairs at or above 0.95).
  On images that small, near copies by embeddings are look-alikes as much as copies; their pixels
  still tell copies apart (above).
Photos share less than silhouettes on a flat background, so distinct photos sit lower; lower
--near-threshold to catch heavier edits, raise it (or --pixel-threshold) for bursts.
A pair by embeddings alone (not the same bytes, not the same pixels) is a look-alike. Where more
than LOOK_ALIKE_SHARE (half) of a folder's images have one, the embeddings cannot tell its images
apart at that threshold (as cleanlab scales its near-duplicate radius by the median distance to the
nearest neighbour: here the median image's nearest neighbour is above the threshold): small simple
images such as the demo digits (at 0.95, 65% of them; the animals 0.7%), or the features of a
random initialisation.
Those pairs are then left out, and the check says so (`look_alikes_shown`); the copies by bytes and
pixels are still found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEAR_AT = 0.95  # cosine similarity of L2-normalised embeddings: a near copy at or above it (module docstring)
PIXEL_AT = 0.993  # cosine similarity of pixel descriptors (pixel_hash.py): a copy at or above it (module docstring)
LOOK_ALIKE_SHARE = 0.5  # more images than this with a look-alike by embeddings alone: those are left out (docstring)
BLOCK_ROWS = 1024  # rows per matrix product: 1,024 x 10,000 float32 similarities are 40 MB
_READ_BYTES = 1 << 20


def file_digest(path: str) -> str:
    """A digest of the file's bytes (BLAKE2b, 128 bits): equal for exact copies, whatever their names."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_pairs(digests: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for every pair of items with the same digest, as chains (each item joined
    to the first of its digest: enough for the groups)."""
    first: dict[str, int] = {}
    left: list[int] = []
    right: list[int] = []
    for j, d in enumerate(digests):
        i = first.setdefault(d, j)
        if i != j:
            left.append(i)
            right.append(j)
    return np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)


def near_pairs(
    unit: np.ndarray, threshold: float, block: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) with i < j for every pair of rows of `unit` (L2-normalised) whose cosine
    similarity is at least `threshold`: one matrix product per block of rows, against the rows from
    that block on (each pair computed once)."""
    n = len(unit)
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = unit[start:stop] @ unit[start:].T  # (block, n - start): column c is row start + c
        # Only pairs above the diagonal: row r of the block is item start + r, so column c > r.
        rows, cols = np.nonzero(sims >= threshold)
        keep = cols > rows
        rows, cols = rows[keep], cols[keep]
        found_i.append(rows + start)
        found_j.append(cols + start)
        found_s.append(sims[rows, cols])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s).astype(np.float32)


@dataclass
class Group:
    """Items joined by pairs: their indices (ascending) and, for each measure of the pairs, the lowest
    value among the pairs that joined them (its weakest link)."""

    members: list[int]
    weakest: tuple[float, ...]


def groups(n: int, left: np.ndarray, right: np.ndarray, sims: np.ndarray) -> list[Group]:
    """Connected components of more than one item over the pairs (left[k], right[k]) of `n` items,
    each with its weakest link in each column of `sims` (one row a pair; union-find, path halving)."""
    sims = np.asarray(sims, dtype=np.float64)
    sims = sims.reshape(len(left), -1) if sims.ndim < 2 else sims
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    weakest: dict[int, np.ndarray] = {}
    members: dict[int, list[int]] = {}
    for a, s in zip(left.tolist(), sims, strict=True):
        r = root(a)
        weakest[r] = np.minimum(weakest[r], s) if r in weakest else s
    for a in sorted(set(left.tolist()) | set(right.tolist())):
        members.setdefault(root(a), []).append(a)
    return [Group(m, tuple(float(v) for v in weakest[r])) for r, m in sorted(members.items()) if len(m) > 1]


@dataclass
class Found:
    """A group of copies: "exact" | "near", its images and weakest links (embeddings, pixels), and
    what found it: ["bytes"], or "embeddings" and/or "pixels" (a pair of it at or above that threshold)."""

    kind: str
    group: Group
    by: list[str]


@dataclass
class Copies:
    """What `find` found: the groups, and how many of the images had a look-alike by embeddings alone
    (a pair at or above that threshold that is no copy by bytes or pixels)."""

    groups: list[Found]
    look_alike_share: float  # of the images with embeddings
    look_alikes_shown: bool  # False: over LOOK_ALIKE_SHARE, left out (the embeddings cannot tell these images apart)


def find(
    digests: Sequence[str],
    unit: np.ndarray,
    featured: np.ndarray,
    pixels: np.ndarray,
    threshold: float,
    pixel_threshold: float,
) -> Copies:
    """The groups of copies among the images whose file `digests` are given: exact copies over every
    image; near copies from the pairs whose pixel descriptors (`pixels`, L2-normalised, a row per
    image) or embeddings (`unit`, L2-normalised, row k that of image featured[k]) are at or above
    their threshold, but not exact copies (those are the exact groups). Each group with its weakest
    links (embeddings, pixels) and what found it. Where more than LOOK_ALIKE_SHARE of the images have
    a look-alike by embeddings alone, those pairs are left out (module docstring)."""
    n = len(digests)
    left, right = exact_pairs(digests)
    ones = np.ones((len(left), 2), np.float32)
    found = [Found("exact", g, ["bytes"]) for g in groups(n, left, right, ones)]
    fi, fj, _ = near_pairs(unit, threshold)
    pi, pj, _ = near_pairs(pixels, pixel_threshold)
    same = np.asarray(digests)
    by_embeddings = np.unique(featured[fi] * n + featured[fj])  # i < j: rows ascend
    by_embeddings = by_embeddings[same[by_embeddings // n] != same[by_embeddings % n]]
    by_pixels = np.unique(pi * n + pj)
    alike = np.setdiff1d(by_embeddings, by_pixels)  # neither the same bytes nor the same pixels
    share = len(np.unique(np.concatenate([alike // n, alike % n]))) / max(1, len(featured))
    shown = share <= LOOK_ALIKE_SHARE
    pairs = np.union1d(by_embeddings if shown else np.intersect1d(by_embeddings, by_pixels), by_pixels)
    i, j = pairs // n, pairs % n
    differ = same[i] != same[j]
    i, j = i[differ], j[differ]
    if len(i):
        row = np.full(n, -1)
        row[featured] = np.arange(len(featured))
        both = (row[i] >= 0) & (row[j] >= 0)
        features_cos = np.where(both, np.einsum("kd,kd->k", unit[row[i]], unit[row[j]]), 0.0)
        pixels_cos = np.einsum("kd,kd->k", pixels[i], pixels[j])
        for g in groups(n, i, j, np.stack([features_cos, pixels_cos], axis=1)):
            inside = np.isin(i, g.members)  # the pairs that joined it
            by = [
                m
                for m, s, t in (("embeddings", features_cos, threshold), ("pixels", pixels_cos, pixel_threshold))
                if (s[inside] >= t).any()
            ]
            found.append(Found("near", g, by))
    return Copies(found, round(share, 4), shown)
