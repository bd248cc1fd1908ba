"""Reading an image: its header (size, channels) without decoding, its pixels as RGB or N channels.

`load_image` decodes to 8-bit RGB (any PIL mode: 16-bit and float scaled, alpha composited on
white); `load_pixels` reads (N, H, W) float32 for a run with --in-channels N other than 3 (the
"Other channel counts" section says how: .npy, multi-band TIFF, PIL). Both raise UnreadableImage
for a file that cannot be decoded. `check_header` reads only the header, as a scan does, and
refuses an image over MAX_IMAGE_PIXELS ($TL_MAX_IMAGE_PIXELS) before any pixel is decoded (a
decompression bomb); `check_image` says in words why a file handed over (an upload, a path to
predict on) cannot be used. Finding the images of a dataset is folders.py's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .. import settings

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ARRAY_EXTENSIONS = {".npy"}  # read only with --in-channels other than 3


def image_extensions(channels: int = 3) -> set[str]:
    """The file types a scan reads for images of `channels` channels."""
    return IMAGE_EXTENSIONS if channels == 3 else IMAGE_EXTENSIONS | ARRAY_EXTENSIONS


# Decompression bombs are refused from the header, before any pixel is decoded.
MAX_IMAGE_PIXELS = settings.current().max_image_pixels
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, too large)."""


# --- the header: size and channels, nothing decoded -----------------------------------------------


def _open_header(path: Path) -> tuple[int, int]:
    """(width, height) from the header only; refuses images over MAX_IMAGE_PIXELS undecoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
            return img.size


def check_header(path: Path, channels: int = 3) -> tuple[int, int]:
    """(width, height) of one image from its header, as a scan reads it: raises for a file that is
    not an image, one of another channel count, or one over MAX_IMAGE_PIXELS (undecoded)."""
    return _open_header(path) if channels == 3 else _probe(path, channels)


def check_image(path: str | Path, channels: int = 3, decode: bool = False) -> str | None:
    """Why `path` cannot be used as an image (its type, its header, its size; with `decode`, its
    pixels too), or None: what a scan checks, worded for a file someone handed over (an upload, a
    path to predict on)."""
    p = Path(path)
    if p.suffix.lower() not in image_extensions(channels):
        return (
            f"{p.name}: not an image file type TransferLab reads ({p.suffix or 'no extension'}); "
            f"use one of {', '.join(sorted(image_extensions(channels)))}"
        )
    try:
        check_header(p, channels)
        if decode:
            load_image(str(p)) if channels == 3 else load_pixels(str(p), channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"{p.name}: refused, larger than {MAX_IMAGE_PIXELS:,} pixels ({e}); resize it first"
    except Exception as e:  # not an image after all, truncated, empty file
        return f"{p.name}: not a readable image ({type(e).__name__}: {e}); check the file is not corrupt"
    return None


# --- three channels: RGB ----------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float scaled, alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        arr = arr / hi * 255 if hi > 255 else arr
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Decode to RGB; UnreadableImage if the file is truncated, corrupt or a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{path}: {e.__class__.__name__}: {e}") from None


# --- other channel counts: --in-channels N, N != 3 ------------------------------------------------
#
# Every file becomes (N, H, W) float32, its values scaled by its type: uint8 / 255, uint16 / 65535,
# bool as 0 / 1, float as it is (not-a-number and infinities read as 0); other types are skipped.
#   .npy         H x W x N, channels last, as images are (a 2-D array is one channel). Never
#                guessed: a channels-first array is skipped, with the np.moveaxis that fixes it.
#   .tif .tiff   read with tifffile (multi-band, any bit depth). Its own axes metadata says
#                where the bands are: samples last (contiguous, "YXS") or bands first (planar
#                "SYX", or one band per page).
#   other        through PIL. N = 1: converted to one gray channel (colour to L, 16-bit kept
#                16-bit). Other N: the image's own bands (L 1, LA 2, RGB 3, RGBA 4).


class ChannelMismatch(ValueError):
    """A file with another number of channels than the run's --in-channels."""

    def __init__(self, found: int, channels: int, hint: str = ""):
        super().__init__(f"{found} channels, not the {channels} of --in-channels {channels}{hint}")
        self.found = found


_SCALES = {np.uint8: 255.0, np.uint16: 65535.0, np.bool_: 1.0}
_ONE_BAND = ("I;16", "I;16B", "I;16L", "I", "F", "1")  # PIL modes read as they are: one band, any depth


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "npy" if suffix == ".npy" else "tiff" if suffix in (".tif", ".tiff") else "pil"


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind != "f" and dtype.type not in _SCALES:
        raise ValueError(f"pixels of type {dtype}; save uint8, uint16 or float arrays")


def _hwc(shape: tuple[int, ...], channels: int, where: str) -> tuple[int, int, int]:
    """(height, width, channels) of an H x W (x C) array; a channels-first one is refused."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        raise ValueError(f"{where} of shape {shape}; expected H x W x channels")
    h, w, c = shape
    if c != channels and shape[0] == channels:
        raise ChannelMismatch(
            c, channels, f" (shape {shape} looks channels-first: save it as H x W x C, np.moveaxis(a, 0, -1))"
        )
    return h, w, c


def _tiff_axes(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], bool]:
    """(shape as H x W x C, whether the bands come first) from tifffile's series axes."""
    if len(shape) == 3 and not axes.endswith("S") and axes.endswith("YX"):
        return (shape[1], shape[2], shape[0]), True  # planar bands, or one band per page
    return tuple(shape), False


def _pil_mode(img: Image.Image, channels: int) -> Image.Image:
    """The image in the mode whose bands are read: one gray band for N = 1; else its own bands."""
    if img.mode in _ONE_BAND:
        return img
    if channels == 1:
        return to_rgb(img).convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img


def _probe(path: Path, channels: int) -> tuple[int, int]:
    """(width, height) from the header only, checking channels and type; ChannelMismatch if it has other channels."""
    kind = _kind(path)
    if kind == "pil":
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                found = 1 if channels == 1 else Image.getmodebands(_pil_mode_name(img))
                (w, h), dtype = img.size, None
    elif kind == "npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header, not the data
        (h, w, found), dtype = _hwc(arr.shape, channels, "an array"), arr.dtype
    else:
        import tifffile  # multi-band TIFF: PIL reads only 1, 3 or 4 8-bit bands

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, _ = _tiff_axes(series.shape, series.axes)
            (h, w, found), dtype = _hwc(shape, channels, f"a TIFF ({series.axes})"), series.dtype
    if dtype is not None:
        _check_dtype(np.dtype(dtype))
    if w * h > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{w}x{h} pixels")
    if found != channels:
        raise ChannelMismatch(found, channels)
    return w, h


def _pil_mode_name(img: Image.Image) -> str:
    """The mode _pil_mode converts `img` to, from its header (N != 1)."""
    if img.mode == "P":
        return "RGBA" if "transparency" in img.info else "RGB"
    return "L" if img.mode in _ONE_BAND else img.mode


def _read_hwc(path: Path, channels: int) -> np.ndarray:
    kind = _kind(path)
    if kind == "npy":
        arr = np.load(path, allow_pickle=False)
        _hwc(arr.shape, channels, "an array")
    elif kind == "tiff":
        import tifffile  # only where a TIFF is read

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr = series.asarray()
            if _tiff_axes(series.shape, series.axes)[1]:
                arr = np.moveaxis(arr, 0, -1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                arr = np.asarray(_pil_mode(img, channels))
        if arr.dtype == np.int32:  # PIL's mode I: 16-bit images read as 32-bit integers
            arr = arr.clip(0, 65535).astype(np.uint16)
    return arr[..., None] if arr.ndim == 2 else arr


def load_pixels(path: str, channels: int) -> np.ndarray:
    """An image as --in-channels `channels` reads it: (channels, H, W) float32, scaled by its type.

    UnreadableImage if it cannot be read, or no longer has `channels` channels. (Three channels
    are read by load_image, as RGB.)
    """
    try:
        arr = _read_hwc(Path(path), channels)
        if arr.shape[2] != channels:
            raise ChannelMismatch(arr.shape[2], channels)
        _check_dtype(arr.dtype)
        if arr.dtype.kind == "f":
            out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        else:
            out = arr.astype(np.float32) / _SCALES[arr.dtype.type]
        return np.ascontiguousarray(out.transpose(2, 0, 1))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{path}: {e.__class__.__name__}: {e}") from None
