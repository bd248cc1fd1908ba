"""The bundled demo datasets, written out as ordinary image folders.

Both are real images that ship inside registry packages, so the demo works offline:
  animals: 10 classes of 28x28 animal silhouettes (package animal-mnist, 1,000 per class)
  digits:  10 classes of 8x8 handwritten digits (scikit-learn's load_digits, ~180 per class)
They are upscaled to RGB PNGs so that they look like any folder a user would bring.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError

ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DATASETS = ("animals", "digits")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a pickled numpy array needs, and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
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
        raise UserError("the animal demo data ships in the package animal-mnist, which is not "
                        "installed; run: pip install --no-deps animal-mnist==0.4")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    images = _load_numpy_pickle(folder / "animal_data_version_3.gz")
    labels = _load_numpy_pickle(folder / "animal_label_version_3.gz")
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return images, d.target.astype(np.int64)


def _write(images: np.ndarray, labels: np.ndarray, classes: list[str], out: Path, size: int,
           per_class: int, seed: int) -> dict[str, int]:
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
            img.convert("RGB").save(folder / f"{name}_{i:05d}.png", optimize=False)
        counts[name] = len(idx)
    return counts


def write_demo_data(out_dir: str | Path, datasets: tuple[str, ...] = DATASETS, per_class: int = 150,
                    size: int = 96, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write each demo dataset to out_dir/<name>/<class>/*.png; per_class=0 writes them all."""
    out = Path(out_dir)
    written = {}
    for name in datasets:
        if name == "animals":
            images, labels = load_animals()
            classes = ANIMAL_CLASSES
        elif name == "digits":
            images, labels = load_digits()
            classes = [str(d) for d in range(10)]
        else:
            raise UserError(f"unknown demo dataset {name!r}; choose from {', '.join(DATASETS)}")
        written[name] = _write(images, labels, classes, out / name, size, per_class, seed)
    return written
