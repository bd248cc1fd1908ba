"""Duplicates in a dataset: exact copies by content, near copies by the cosine of their embeddings.

  - exact: the same bytes (a BLAKE2b digest of each file, `file_digest`), whatever the name;
  - near: the cosine similarity of two images' L2-normalised frozen embeddings (the body's output
    at the head input, data_probe.frozen_activations) at or above `NEAR_AT`.
Pairs are found by normalised matrix products in blocks of rows (`near_pairs`: no Python loop over
pairs; 10,000 x 1,280 features take a few seconds, bench/check_data.py), then joined into groups
(connected components, `groups`): a group's `similarity` is its weakest link.

NEAR_AT, calibrated on the demo data (`python bench/check_data.py --calibrate`): 300 images of each
set (30 a class, 96 px PNGs), each copied four ways, seen as the check sees them (efficientnet_lite0,
ImageNet weights, 224 px): the share of the copies at or above a threshold, and how many of the
4,350 pairs of DISTINCT images of one class are:
  animals  JPEG q75  JPEG q50  +10% bright  +20% bright   distinct pairs at or above
    0.93     96%       90%        99%          95%          25
    0.94     90%       78%        98%          92%           7
    0.95     82%       62%        96%          85%           1 (the highest: 0.950)
    0.96     64%       40%        93%          72%           0
  (the lowest copy: 0.860, +20% bright; 0.892, JPEG q75.)
NEAR_AT = 0.95: nearly every slightly brightened copy and 4 in 5 re-encoded ones are found, and
all but 1 of 4,350 distinct same-class pairs are not. At 0.94 the distinct look-alikes start to
chain: in tests/test_data_check.py's folder, six different bear silhouettes in one pose joined one
group at 0.941 (its planted copies: 0.979 brightened, 0.962 re-encoded).
  digits (8x8 scans upscaled 12x) cannot be calibrated this way: distinct images of one digit differ
  by a few of their 64 pixels and reach 0.983, above most of their copies (at 0.95: JPEG q75 99%,
  q50 17%, +10% 82%, +20% 20% found, and 283 of 4,350 distinct pairs above). On images that small,
  near copies are look-alikes as much as copies; exact copies are still exact.
Photos share less than silhouettes on a flat background, so distinct photos sit lower; lower
--near-threshold to catch heavier edits (0.93: 9 in 10 q50 re-encodes), raise it for bursts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEAR_AT = 0.95  # cosine similarity of L2-normalised embeddings: a near copy at or above it (module docstring)
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
    """Items joined by pairs: their indices (ascending) and the lowest similarity among the pairs that joined them."""

    members: list[int]
    similarity: float


def groups(n: int, left: np.ndarray, right: np.ndarray, sims: np.ndarray) -> list[Group]:
    """Connected components of more than one item over the pairs (left[k], right[k]) of `n` items,
    each with its weakest link (union-find, path halving)."""
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
    weakest: dict[int, float] = {}
    members: dict[int, list[int]] = {}
    for a, s in zip(left.tolist(), sims.tolist(), strict=True):
        r = root(a)
        weakest[r] = min(weakest.get(r, 1.0), float(s))
    for a in sorted(set(left.tolist()) | set(right.tolist())):
        members.setdefault(root(a), []).append(a)
    return [Group(m, weakest[r]) for r, m in sorted(members.items()) if len(m) > 1]
