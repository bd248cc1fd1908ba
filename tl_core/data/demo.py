"""The bundled demo datasets, written out as ordinary image folders.

The images are real ones that ship inside registry packages, so the demo works offline:
  animals:       10 classes of 28x28 animal silhouettes (package animal-mnist, 1,000 per class)
  digits:        10 classes of 8x8 handwritten digits (scikit-learn's load_digits, ~180 per class)
  digits_target: the same digits, file for file, recoloured on textured backgrounds (a domain
                 shift in the style of MNIST-M; see `recolour`)
They are upscaled to RGB PNGs so that they look like any folder a user would bring. `digits` and
`digits_target` are a domain pair: train on `digits` (the source), adapt to `digits_target` (its
labels are kept, for evaluation), and compare source only, DANN and MMD on one pair.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DATASETS = ("animals", "digits", "digits_target")
DIGIT_CLASSES = [str(d) for d in range(10)]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a pickled numpy array needs, and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the old path warns
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _load_numpy_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        arr = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{path} does not hold a numpy array")
    return arr


def load_animals() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels) from the animal-mnist package, without importing it
    (its module imports tensorflow)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the animal demo data ships in the package animal-mnist, which is not "
            "installed; run: pip install --no-deps animal-mnist==0.4"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    images = _load_numpy_pickle(folder / "animal_data_version_3.gz")
    labels = _load_numpy_pickle(folder / "animal_label_version_3.gz")
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits  # scikit-learn: only for the digits demo

    d = sk_load_digits()
    images = (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return images, d.target.astype(np.int64)


def _grey(image: np.ndarray, index: int) -> Image.Image:
    return Image.fromarray(image, "L").convert("RGB")


def _textured(image: np.ndarray, index: int, seed: int) -> Image.Image:
    """The digit recoloured on a textured background; its own generator, so a file depends only on
    (seed, index), not on which other images were written."""
    return Image.fromarray(recolour(image, np.random.default_rng([seed, index])), "RGB")


def _write(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    out: Path,
    size: int,
    per_class: int,
    seed: int,
    render: Callable[[np.ndarray, int], Image.Image] = _grey,
) -> dict[str, int]:
    """Each class's images (a `seed`-chosen `per_class` of them) upscaled to `size`, rendered, as PNGs.

    Files are named by the image's index in the source array, so two datasets written from the
    same images with the same seed hold the same files (a domain pair, image for image).
    """
    rng = np.random.default_rng(seed)
    counts = {}
    for label, name in enumerate(classes):
        idx = np.flatnonzero(labels == label)
        if per_class and len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = Image.fromarray(images[i], "L").resize((size, size), Image.Resampling.BICUBIC)
            render(np.asarray(img), int(i)).save(folder / f"{name}_{i:05d}.png", optimize=False)
        counts[name] = len(idx)
    return counts


# --- the target domain: digits recoloured on textures ----------------------------------------


def _upsampled(low: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """A small float field in [0, 1] (h x w x 3) smoothly enlarged to size x size."""
    img = Image.fromarray((low * 255).round().astype(np.uint8), "RGB").resize((size, size), resample)
    return np.asarray(img, dtype=np.float32) / 255


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random background texture, size x size x 3 in [0, 1]: a smooth colour field, stripes
    between two colours, or coloured noise over a base colour."""
    kind = rng.integers(3)
    if kind == 0:  # smooth random colour field
        cells = int(rng.integers(2, 6))
        return _upsampled(rng.random((cells, cells, 3)), size, Image.Resampling.BICUBIC)
    if kind == 1:  # stripes at a random angle, period and phase
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(size / 10, size / 3), rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
        a, b = rng.random(3), rng.random(3)
        return a + wave[..., None] * (b - a)
    cells = max(2, size // int(rng.integers(3, 8)))  # coloured noise, grains of 3 to 7 px
    noise = _upsampled(rng.random((cells, cells, 3)), size, Image.Resampling.BILINEAR)
    return 0.5 * rng.random(3) + 0.5 * noise


def _hsv_colour(rng: np.random.Generator, value: float) -> np.ndarray:
    """A saturated colour of random hue at brightness `value`, as RGB in [0, 1]."""
    hsv = np.array([[[rng.integers(256), rng.integers(150, 256), round(value * 255)]]], dtype=np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), dtype=np.float32)[0, 0] / 255


def recolour(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey digit (uint8 H x W, strokes bright on black) as an RGB image (H x W x 3 uint8): a
    random saturated foreground colour over a random textured background.

    A synthetic stand-in for MNIST-M (Ganin & Lempitsky 2015, who blended MNIST digits with
    random patches of BSDS500 photographs): nothing may be downloaded here, so the patches are
    textures drawn with numpy. To keep the digit legible, the background lies in a dark or a
    light band of brightness and the foreground on the other side: the shift is in colour and
    texture, not in which digit it is.
    """
    size = grey.shape[0]
    dark = rng.random() < 0.5
    background = (0.0 if dark else 0.45) + 0.55 * _texture(rng, size)
    foreground = _hsv_colour(rng, rng.uniform(0.85, 1.0) if dark else rng.uniform(0.05, 0.3))
    stroke = (grey.astype(np.float32) / 255)[..., None]
    out = (1 - stroke) * background + stroke * foreground
    return (out * 255).round().clip(0, 255).astype(np.uint8)


def write_demo_data(
    out_dir: str | Path, datasets: tuple[str, ...] = DATASETS, per_class: int = 150, size: int = 96, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Write each demo dataset to out_dir/<name>/<class>/*.png; per_class=0 writes them all."""
    out = Path(out_dir)
    written = {}
    for name in datasets:
        if name == "animals":
            images, labels = load_animals()
            classes = ANIMAL_CLASSES
        elif name in ("digits", "digits_target"):
            images, labels = load_digits()
            classes = DIGIT_CLASSES
        else:
            raise UserError(f"unknown demo dataset {name!r}; choose from {', '.join(DATASETS)}")
        render = functools.partial(_textured, seed=seed) if name == "digits_target" else _grey
        written[name] = _write(images, labels, classes, out / name, size, per_class, seed, render)
    return written
