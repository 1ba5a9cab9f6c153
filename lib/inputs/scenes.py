"""The embedded default data: scikit-learn's digits composited onto scikit-image's pictures.

Digit images are split into disjoint train and test sets first, so no handwritten digit of the
test scenes was ever seen in training. Each scene is a 32x32 RGB crop of a photograph or texture
with one digit pasted at a random position and scale, in a colour that contrasts with the
background under it. Arithmetic is float64 numpy and the result is quantised to 8 bits, so the
bytes (and the data fingerprint) do not depend on the machine.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .uris import cache_dir

SIZE = 32
DIGIT_SCALES = (12, 24)  # side of the pasted digit in pixels, inclusive range
CROP_FACTORS = (2, 3, 4, 6, 8)  # background crop = SIZE * factor pixels, block-averaged down
TEST_FRACTION = 0.3
BACKGROUNDS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "brick", "grass", "gravel", "camera", "moon", "coins", "text", "page", "clock",
    "retina",
)  # fmt: skip
COUNTS = {"train": 40000, "test": 2000}
VERSION = "v1"
SPLIT_SEED_OFFSET = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Scenes:
    """Scenes of one split: uint8 images (N, 3, 32, 32), labels (N,), boxes (N, 4) y0 x0 y1 x1."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


@lru_cache(maxsize=1)
def _background_pool() -> list[np.ndarray]:
    """Each picture block-averaged by each crop factor that leaves it larger than a scene."""
    import skimage.data

    pool = []
    for name in BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3] / 255.0
        for f in CROP_FACTORS:
            h, w = img.shape[0] // f, img.shape[1] // f
            if min(h, w) >= SIZE:
                pool.append(img[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3)))
    return pool


def _digit_split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split the 1797 digit images into disjoint train/test sets, stratified by class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        k = int(round(len(idx) * TEST_FRACTION))
        test.extend(idx[:k])
        train.extend(idx[k:])
    out = {}
    for split, idx in (("train", np.sort(train)), ("test", np.sort(test))):
        out[split] = (digits.images[idx] / 16.0, digits.target[idx].astype(np.int64))
    return out


def _warp_digit(rng: np.random.Generator, digit: np.ndarray, side: int) -> np.ndarray:
    """The 8x8 digit drawn into a side x side square under a random small rotation, shear and
    aspect change (bilinear sampling, zero outside)."""
    angle = np.deg2rad(rng.uniform(-10, 10))
    shear = rng.uniform(-0.15, 0.15)
    aspect = rng.uniform(0.85, 1.15)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fwd = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([aspect, 1 / aspect])
    inv = np.linalg.inv(fwd) * (8 / side)
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1)
    src = (grid + 0.5 - side / 2) @ inv.T + 4 - 0.5  # (side, side, 2) source (y, x)
    padded = np.pad(digit, 1)
    y, x = src[..., 0] + 1, src[..., 1] + 1
    inside = (y >= 0) & (y <= 9) & (x >= 0) & (x <= 9)
    y0, x0 = np.clip(np.floor(y), 0, 8).astype(int), np.clip(np.floor(x), 0, 8).astype(int)
    fy, fx = np.clip(y - y0, 0, 1), np.clip(x - x0, 0, 1)
    val = (
        padded[y0, x0] * (1 - fy) * (1 - fx)
        + padded[y0 + 1, x0] * fy * (1 - fx)
        + padded[y0, x0 + 1] * (1 - fy) * fx
        + padded[y0 + 1, x0 + 1] * fy * fx
    )
    return np.clip(np.where(inside, val, 0.0), 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least 0.4 in luminance from the mean colour `under` it."""
    lum = float(under @ np.array([0.299, 0.587, 0.114]))
    base = rng.random(3)
    return 0.9 + 0.1 * base if lum < 0.5 else 0.1 * base


def _scene(rng: np.random.Generator, pool: list[np.ndarray], digit: np.ndarray):
    bg_img = pool[rng.integers(len(pool))]
    y, x = rng.integers(bg_img.shape[0] - SIZE + 1), rng.integers(bg_img.shape[1] - SIZE + 1)
    bg = bg_img[y : y + SIZE, x : x + SIZE]
    if rng.random() < 0.5:
        bg = bg[:, ::-1]

    s = int(rng.integers(DIGIT_SCALES[0], DIGIT_SCALES[1] + 1))
    alpha_small = np.clip(1.75 * _warp_digit(rng, digit, s), 0.0, 1.0)
    dy, dx = rng.integers(SIZE - s + 1), rng.integers(SIZE - s + 1)
    alpha = np.zeros((SIZE, SIZE))
    alpha[dy : dy + s, dx : dx + s] = alpha_small
    colour = _contrasting_colour(rng, bg[dy : dy + s, dx : dx + s].reshape(-1, 3).mean(axis=0))
    img = bg * (1 - alpha[..., None]) + colour * alpha[..., None]

    ys, xs = np.nonzero(alpha > 0.25)
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    return np.round(img * 255).astype(np.uint8).transpose(2, 0, 1), box


@lru_cache(maxsize=4)
def digit_scenes(split: str, seed: int = 0, count: int | None = None) -> Scenes:
    """The `split` ("train" or "test") scenes, deterministic from `seed`, cached on disk."""
    path = cache_dir() / "data" / f"digit-scenes-{VERSION}-{split}-{seed}-{count}.npz"
    if path.exists():
        with np.load(path) as f:
            return _frozen(Scenes(f["images"], f["labels"], f["boxes"]))
    scenes = _generate(split, seed, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, images=scenes.images, labels=scenes.labels, boxes=scenes.boxes)
    os.replace(tmp, path)
    return scenes


def _frozen(scenes: Scenes) -> Scenes:
    for arr in (scenes.images, scenes.labels, scenes.boxes):
        arr.setflags(write=False)
    return scenes


def _generate(split: str, seed: int, count: int | None) -> Scenes:
    digits, labels = _digit_split(seed)[split]
    n = COUNTS[split] if count is None else count
    rng = np.random.default_rng([seed, SPLIT_SEED_OFFSET[split]])
    pool = _background_pool()
    images = np.empty((n, 3, SIZE, SIZE), np.uint8)
    boxes = np.empty((n, 4), np.int64)
    which = rng.integers(len(digits), size=n)
    for i, d in enumerate(which):
        images[i], boxes[i] = _scene(rng, pool, digits[d])
    return _frozen(Scenes(images, labels[which], boxes))
