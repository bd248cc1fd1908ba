"""A fingerprint of each image's pixels that re-encoding and brightening leave in place: near copies
the embeddings miss.

`descriptor(path)`: the image in grey, shrunk to SIDE x SIDE (a box filter), its 2-D DCT (type II,
orthonormal), and the KEEP x KEEP lowest frequencies but the constant one (143 numbers), scaled to
length 1. The cosine of two images' descriptors is the near-copy measure (duplicates.PIXEL_AT and
the calibration there). This is pHash's DCT (Zauner 2010, "Implementation and Benchmarking of
Perceptual Image Hash Functions"; the `imagehash` library's `phash`) kept as numbers instead of a
bit per coefficient above their median, and with 12 x 12 frequencies instead of 8 x 8. The bits
could not separate brightened copies from distinct images on the demo data (a 64-bit pHash: +20%
brightened copies differ by up to 8 bits, two distinct animals by as few as 2); the numbers can:
  - a re-encoding (JPEG at any quality tried) leaves the lowest frequencies as they were;
  - brightness or contrast (x -> a x + b) changes only the constant term (dropped) and the length
    (divided out): the cosine moves only where pixels clip at black or white;
  - 12 x 12 rather than 8 x 8: distinct images further apart (animals: the closest two distinct
    images of 1,000 at 0.986 instead of 0.993), copies as close (the lowest at 0.994).
What it does not see, the embeddings may: crops, flips, rotations, heavier edits.

Each dataset's descriptors are computed once (about a millisecond an image, JPEGs decoded at a
reduced scale) and kept in the on-disk cache beside the features (scan_cache.ArrayCache, one row an
image of decode_cache.DatasetRows, unreadable images marked failed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
from PIL import Image

from ..data import images as image_files
from ..data.scan_cache import ArrayCache

if TYPE_CHECKING:  # its module imports torch; this one needs only its rows
    from ..data.decode_cache import DatasetRows

SIDE = 32  # the grey thumbnail's side, as pHash's
KEEP = 12  # the KEEP x KEEP lowest frequencies (pHash: 8; module docstring)
DIM = KEEP * KEEP - 1  # without the constant term
VERSION = 1  # of the descriptor: a change recomputes the cache


def thumbnail(path: str) -> np.ndarray:
    """The image as SIDE x SIDE grey float32 values; images.UnreadableImage if it cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (2 * SIDE, 2 * SIDE))  # JPEG: decode at the smallest scale still 2x the side
                img.load()
                grey = image_files.to_rgb(img).convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise image_files.UnreadableImage(f"{path}: {e.__class__.__name__}: {e}") from None
    return np.asarray(grey, dtype=np.float32)


def from_thumbnail(grey: np.ndarray) -> np.ndarray:
    """The descriptor of a SIDE x SIDE grey image: its lowest DCT frequencies but the constant, at length 1
    (all zeros for a flat image: similar to nothing)."""
    d = scipy.fft.dctn(np.asarray(grey, dtype=np.float64), type=2, norm="ortho")[:KEEP, :KEEP].ravel()[1:]
    norm = float(np.linalg.norm(d))
    return (d / norm if norm > 1e-6 else np.zeros(DIM)).astype(np.float32)


def descriptor(path: str) -> np.ndarray:
    """The image file's descriptor (module docstring)."""
    return from_thumbnail(thumbnail(path))


def descriptors(rows: DatasetRows, paths: Sequence[str]) -> np.ndarray:
    """(len(paths), DIM) descriptors of the dataset's images `paths`, through the cache; an image
    that cannot be decoded has a row of zeros (a copy of nothing)."""
    cache = ArrayCache(
        "pixel_hash",
        {"rows": rows.fingerprint, "version": VERSION, "side": SIDE, "keep": KEEP},
        len(rows.paths),
        (DIM,),
        np.float32,
    )
    wanted = np.asarray([rows.row[p] for p in paths], dtype=np.int64)
    if len(missing := cache.missing(np.unique(wanted))):
        with cache.filling():
            missing = cache.missing(missing)  # another process may have filled them meanwhile
            done, failed, values = [], [], []
            for r in missing.tolist():
                try:
                    values.append(descriptor(rows.paths[r]))
                    done.append(r)
                except image_files.UnreadableImage:
                    failed.append(r)
            if done:
                cache.write(np.asarray(done), np.stack(values))
            cache.commit(np.asarray(done, dtype=np.int64), np.asarray(failed, dtype=np.int64))
    out = np.array(cache.data()[wanted], dtype=np.float32)
    out[np.isin(wanted, cache.failed())] = 0.0
    return out
