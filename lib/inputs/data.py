"""Data sets: `load_dataset(spec)` for builtin data, image folders and Zarr/xarray data sets.

A data set is random access by index and yields pixel-space float32 images in [0, 1],
int64 labels and, where the data has them, boxes (y0, x0, y1, x1; ends exclusive).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import SalauditError
from . import boxes
from .kinds import kind_of
from .spec_strings import SpecString
from .uris import filesystem

DATA_KINDS = ("builtin", "folder", "zarr", "csv", "parquet")
IMAGE_MODES = ("RGB", "L")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
BUILTIN_DATA = ("digit-scenes", "breast-cancer", "sentiment")


@dataclass
class Batch:
    """Inputs (images (B, C, H, W), tables (B, F), texts' embeddings (B, T, D)) float32 in
    [0, 1], labels (B,), boxes (B, 4) or None, the dataset indices they came from, and a
    text's words (B, T) and padding mask (B, T; True on real tokens)."""

    index: np.ndarray
    image: torch.Tensor
    label: torch.Tensor
    bbox: torch.Tensor | None
    words: np.ndarray | None = None
    padding: np.ndarray | None = None


class Dataset:
    """Random access to a data set's samples. Subclasses implement `_load` and `labels`."""

    spec: str
    num_classes: int
    image_shape: tuple[int, ...]  # one sample's: (C, H, W), a table's (F,), a text's (T, D)
    has_boxes: bool
    class_names: list[str] | None = None  # label i's name, where the data has names
    feature_names: list[str] | None = None  # a table's column names
    _references: Dataset | None = None  # where expected gradients' baselines come from

    def __len__(self) -> int:
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def _load(self, indices: np.ndarray) -> Batch:
        raise NotImplementedError

    def _fingerprint(self) -> str:
        raise NotImplementedError

    @cached_property
    def fingerprint(self) -> str:
        """A content hash of the data set (images, labels, boxes, transforms)."""
        return self._fingerprint()

    def load(self, indices) -> Batch:
        """Load and validate the samples at `indices`."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 0) | (indices >= len(self))]
        if bad.size:
            raise SalauditError(
                f"sample indices {bad[:5].tolist()} are out of range for {self.spec} "
                f"({len(self)} samples)"
            )
        batch = self._load(indices)
        check_images(batch.image, batch.index, self.image_shape)
        return batch

    def references(self, n: int, seed: int) -> torch.Tensor:
        """`n` inputs drawn with `seed`, the baselines of expected gradients (from the
        training split where this is a builtin's test split)."""
        if self._references is not None:
            return self._references.references(n, seed)
        rng = np.random.default_rng([seed, 7])
        idx = np.sort(rng.choice(len(self), size=min(n, len(self)), replace=False))
        return self.load(idx).image


def check_images(images: torch.Tensor, index: np.ndarray, shape: tuple[int, ...]) -> None:
    """Refuse inputs that are not finite values in [0, 1] of the expected shape (images in
    pixel space, tables MinMax-scaled)."""
    if kind_of(tuple(shape)) == "table":
        return check_table(images, index)
    if tuple(images.shape[1:]) != tuple(shape):
        raise SalauditError(
            f"images have shape {tuple(images.shape[1:])}, expected {tuple(shape)}; "
            "resize or crop them to the model's input (folder data: ?resize=..&crop=..)"
        )
    finite = torch.isfinite(images).flatten(1).all(1)
    if not finite.all():
        raise SalauditError(
            f"samples {index[~finite.numpy()][:10].tolist()} contain NaN or infinite values"
        )
    lo, hi = images.amin(), images.amax()
    if lo < 0 or hi > 1:
        out = ((images < 0) | (images > 1)).flatten(1).any(1).numpy()
        raise SalauditError(
            f"samples {index[out][:10].tolist()} have values in [{lo:.4g}, {hi:.4g}], outside the "
            + (
                "pixel range [0, 1]; give images in pixel space (uint8 data divided by 255, "
                "before any normalisation: the model applies its own)"
                if kind_of(tuple(shape)) == "image"
                else "range [0, 1]; MinMax-scale the embeddings over the dictionary's entries"
            )
        )


def check_table(values: torch.Tensor, index: np.ndarray, name: str = "the table") -> None:
    """Refuse table rows with NaN, infinite or out-of-range features, naming rows and columns."""
    bad = ~torch.isfinite(values)
    if bad.any():
        rows, cols = torch.nonzero(bad, as_tuple=True)
        raise SalauditError(
            f"{name} has NaN or infinite features (rows {index[rows.numpy()][:5].tolist()}, "
            f"columns {sorted(set(cols.tolist()))[:5]}); impute or drop them first"
        )
    out = (values < 0) | (values > 1)
    if out.any():
        rows, cols = torch.nonzero(out, as_tuple=True)
        raise SalauditError(
            f"{name} has features outside [0, 1] (rows {index[rows.numpy()][:5].tolist()}, "
            f"columns {sorted(set(cols.tolist()))[:5]}, values in [{values.min():.4g}, "
            f"{values.max():.4g}]); MinMax-scale every feature to [0, 1], as the papers do"
        )


def _class_indices(labels: np.ndarray, url: str) -> np.ndarray:
    """Labels as int64 class indices; float or negative labels are refused, not cast."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise SalauditError(
            f"labels of {url} are {labels.dtype}; store integer class indices (int64), not "
            "floats or strings"
        )
    if labels.size and labels.min() < 0:
        raise SalauditError(f"labels of {url} hold {labels.min()}; class indices start at 0")
    return labels.astype(np.int64)


def load_dataset(spec: str) -> Dataset:
    """Open a data set.

    `builtin:digit-scenes[?split=test|train]`; `folder:<path or s3 url>[?resize=N][&crop=N]
    [&mode=RGB|L][&boxes=boxes.json or a folder of VOC XML]` (classes from sub-folders, as
    torchvision's ImageFolder);
    `zarr:<path or url>[?group=G]` (arrays image, label and optionally bbox);
    `csv:<path or url>[?label=COLUMN]` and `parquet:...` (tables: every other column a feature
    in [0, 1]).
    """
    from .tables import user_table

    parsed = SpecString.parse(spec, DATA_KINDS, "data")
    loader = {
        "builtin": _builtin,
        "folder": FolderDataset,
        "zarr": open_zarr,
        "csv": user_table,
        "parquet": user_table,
    }[parsed.kind]
    ds = loader(parsed)
    ds.spec = spec
    return ds


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) with labels and optional boxes."""

    def __init__(
        self, images, labels, boxes, num_classes: int, tag: str, references=None, names=None
    ):
        self.images, self.labels_, self.boxes = images, labels, boxes
        self.class_names = names
        self.num_classes = num_classes
        self.image_shape = tuple(images.shape[1:])
        self.has_boxes = boxes is not None
        self.tag = tag
        self._references = references

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> np.ndarray:
        return np.asarray(self.labels_)

    def _load(self, indices: np.ndarray) -> Batch:
        image = torch.from_numpy(self.images[indices].astype(np.float32) / 255)
        bbox = torch.from_numpy(self.boxes[indices]) if self.has_boxes else None
        return Batch(indices, image, torch.from_numpy(self.labels_[indices]), bbox)

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.tag.encode())
        for arr in (self.images, self.labels_, self.boxes):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _builtin(spec: SpecString) -> Dataset:
    from .scenes import digit_scenes

    spec.check_params({"split"}, "builtin data")
    if spec.target not in BUILTIN_DATA:
        raise SalauditError(
            f"unknown builtin data {spec.target!r}; valid: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_DATA)
        )
    split = spec.take("split", "test")
    if split not in ("train", "test"):
        raise SalauditError(f"builtin:{spec.target} has splits train and test, not {split!r}")
    if spec.target == "breast-cancer":
        from .tables import builtin_table

        return builtin_table(split)
    if spec.target == "sentiment":
        from .text import builtin_text

        return builtin_text(split)
    s = digit_scenes(split)
    train_refs = None
    if split == "test":  # expected-gradient baselines come from the training split
        train_refs = _builtin(SpecString(spec.kind, spec.target, {"split": "train"}))
    digits = [str(i) for i in range(10)]
    tag = f"{spec.target}:{split}"
    return ArrayDataset(s.images, s.labels, s.boxes, 10, tag, references=train_refs, names=digits)


class FolderDataset(Dataset):
    """Images in class sub-folders (local or s3://), as torchvision's ImageFolder.

    `resize` scales the shorter side, `crop` takes a centred square, `mode` is RGB or L
    (grey, one channel). `boxes` names a JSON table `{relative path: [y0, x0, y1, x1]}` or a
    folder of PASCAL-VOC XML files (one per image, as ILSVRC ships them), relative to the
    folder or absolute, in the original images' pixels; boxes move with the resize and crop.
    """

    def __init__(self, spec: SpecString):
        spec.check_params({"resize", "crop", "boxes", "mode"}, "folder data")
        self.url = spec.target.rstrip("/")
        self.fs, self.root = filesystem(self.url)
        self.resize = _positive(spec, "resize")
        self.crop = _positive(spec, "crop")
        self.mode = spec.take("mode", "RGB")
        if self.mode not in IMAGE_MODES:
            raise SalauditError(
                f"folder data mode={self.mode!r} is not one of {', '.join(IMAGE_MODES)} "
                "(RGB: three channels, L: one grey channel)"
            )
        if not self.fs.isdir(self.root):
            raise SalauditError(f"image folder {self.url} does not exist or is not a folder")
        self.files, self.labels_, self.classes = self._scan()
        self.num_classes = len(self.classes)
        self.class_names = self.classes
        self._table: dict[str, np.ndarray] = {}
        self._xml: dict[str, str] = {}
        self.boxes_at = spec.take("boxes")
        if self.boxes_at is not None:
            self._open_boxes(self.boxes_at)
        self.has_boxes = self.boxes_at is not None
        first = self._read(0)[0]
        self.image_shape = tuple(first.shape)

    def _scan(self):
        classes = sorted(
            p.rstrip("/").rsplit("/", 1)[-1]
            for p in self.fs.ls(self.root, detail=False)
            if self.fs.isdir(p)
        )
        files, labels, self._tags = [], [], {}
        for label, cls in enumerate(classes):
            listing = self.fs.find(f"{self.root}/{cls}", detail=True)
            found = sorted(p for p in listing if p.lower().endswith(IMAGE_EXTENSIONS))
            files += [p[len(self.root) + 1 :] for p in found]
            labels += [label] * len(found)
            self._tags.update({p[len(self.root) + 1 :]: object_tag(listing[p]) for p in found})
        if not files:
            raise SalauditError(
                f"no images under {self.url}; expected <root>/<class>/<image> with extensions "
                + " ".join(IMAGE_EXTENSIONS)
            )
        return files, np.asarray(labels, dtype=np.int64), classes

    def _open_boxes(self, name: str) -> None:
        """Read a JSON table now, or list a folder of XML files (each read with its image)."""
        path = boxes.resolve(self.root, name)
        url = boxes.resolve(self.url, name)
        if not name or not self.fs.exists(path):
            raise SalauditError(
                f"boxes file {url} does not exist; boxes= names a JSON file or a folder of "
                "PASCAL-VOC XML files, relative to the image folder or absolute"
            )
        if not self.fs.isdir(path):
            self._table = boxes.read_table(self.fs, path, url, self.files)
            return
        listing = self.fs.find(path, detail=True)
        self._xml_path, self._xml_url = path.rstrip("/"), url.rstrip("/")
        self._xml = boxes.match_xml(sorted(listing), self._xml_path, self.files)
        if not self._xml:
            raise SalauditError(
                f"boxes folder {url} has no XML file named like an image of the folder "
                f"(e.g. {self.files[0].rsplit('.', 1)[0]}.xml)"
            )
        self._xml_tags = {rel: object_tag(listing[p]) for rel, p in self._xml.items()}

    def __len__(self) -> int:
        return len(self.files)

    def labels(self) -> np.ndarray:
        return self.labels_

    def _box(self, rel: str, size: tuple[int, int]) -> np.ndarray:
        """The image's box in its original pixels (float), or NO_BOX."""
        if rel in self._table:
            return self._table[rel]
        if rel in self._xml:
            where = self._xml_url + self._xml[rel][len(self._xml_path) :]
            return boxes.read_voc(self.fs.cat_file(self._xml[rel]), where, size)
        return np.asarray(boxes.NO_BOX, dtype=np.float64)

    def _read(self, i: int) -> tuple[torch.Tensor, np.ndarray | None]:
        from PIL import Image

        rel = self.files[i]
        try:
            img = Image.open(io.BytesIO(self.fs.cat_file(f"{self.root}/{rel}")))
            img = img.convert(self.mode)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a damaged file
            raise SalauditError(
                f"cannot read image {self.url}/{rel} ({type(e).__name__}: {e}); "
                "replace the file or remove it from the folder"
            ) from None
        box = self._box(rel, img.size) if self.has_boxes else None
        scale, offset = (1.0, 1.0), (0, 0)
        if self.resize:
            k = self.resize / min(img.size)
            size = (max(1, round(img.width * k)), max(1, round(img.height * k)))
            scale = (size[1] / img.height, size[0] / img.width)
            img = img.resize(size, Image.BILINEAR, reducing_gap=None)
        if self.crop:
            top, left = (img.height - self.crop) // 2, (img.width - self.crop) // 2
            if top < 0 or left < 0:
                raise SalauditError(
                    f"{rel} is {img.width}x{img.height}, smaller than crop {self.crop}; "
                    "set ?resize= to at least the crop size"
                )
            img = img.crop((left, top, left + self.crop, top + self.crop))
            offset = (top, left)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
        arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
        if box is not None:
            box = boxes.transform(box, scale, offset, (img.height, img.width))
        return arr.contiguous(), box

    def _load(self, indices: np.ndarray) -> Batch:
        read = [self._read(int(i)) for i in indices]
        shapes = {tuple(a.shape) for a, _ in read}
        if len(shapes) > 1:
            raise SalauditError(
                f"images of {self.url} differ in size {sorted(shapes)}; add ?resize=N&crop=N"
            )
        image = torch.stack([a for a, _ in read])
        bbox = None
        if self.has_boxes:
            bbox = torch.from_numpy(np.stack([b for _, b in read]).astype(np.int64))
        return Batch(indices, image, torch.from_numpy(self.labels_[indices]), bbox)

    def _fingerprint(self) -> str:
        """From the folder's listing (each file's ETag, or size and mtime): no image is read."""
        h = hashlib.sha256(
            f"folder;resize={self.resize};crop={self.crop};mode={self.mode};".encode()
        )
        for rel, label in zip(self.files, self.labels_, strict=True):
            h.update(f"{rel}:{label}:{self._tags[rel]};".encode())
            if rel in self._table:
                h.update(self._table[rel].tobytes())
            if rel in self._xml:
                h.update(f"xml:{self._xml_tags[rel]};".encode())
        return h.hexdigest()


def _positive(spec: SpecString, key: str) -> int | None:
    """An optional positive integer parameter of a data spec."""
    text = spec.take(key)
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise SalauditError(f"folder data {key}={text!r} is not a positive whole number of pixels")
    return int(text)


def object_tag(info: dict) -> str:
    """What a listing says of one object's content: its ETag (object storage), else its size
    and modification time."""
    tag = info.get("ETag")
    return tag.strip('"') if tag else f"{info.get('size')}:{info.get('mtime')}"


def open_zarr(spec: SpecString) -> Dataset:
    """`zarr:` data: a text where the group has token ids and an embedding table, else
    inputs in an `image` array (`ZarrDataset`)."""
    import zarr

    from .text import zarr_text
    from .uris import storage_options_for

    spec.check_params({"group"}, "zarr data")
    opts = storage_options_for(spec.target)
    try:
        root = zarr.open_group(spec.target, mode="r", storage_options=opts or None)
        group = root[spec.take("group")] if spec.take("group") else root
    except (FileNotFoundError, KeyError) as e:
        raise SalauditError(f"no Zarr group at {spec.target} ({e})") from None
    if {"token", "embedding"} <= set(group.array_keys()):
        return zarr_text(group, spec.target)
    return ZarrDataset(spec.target, group)


class ZarrDataset(Dataset):
    """A Zarr group (local or object storage) with arrays `image` (N, ...) in [0, 1] (or
    uint8 images), `label` (N,) and optionally `bbox` (N, 4); a salaudit store's `inputs`
    qualifies. The samples' shape gives their kind: images (C, H, W), tables (F,) or texts'
    embeddings (T, D), which need a `padding` mask (N, T)."""

    def __init__(self, url: str, group):
        self.url = url
        missing = {"image", "label"} - set(group.array_keys())
        if missing:
            raise SalauditError(
                f"Zarr data {self.url} lacks array(s) {sorted(missing)}; it needs image "
                "(N, C, H, W) and label (N,), optionally bbox (N, 4); a text needs token (N, T) "
                "ids, embedding (V, D) and padding (N, T)"
            )
        if len(group["image"].shape) == 3 and "padding" not in group.array_keys():
            raise SalauditError(
                f"Zarr data {self.url} holds embeddings (N, T, D) but no padding mask: sequences "
                "of different lengths cannot be told from padding without one; add padding "
                "(N, T) bool, True on real tokens"
            )
        self.image, self.label = group["image"], group["label"]
        self.bbox = group["bbox"] if "bbox" in group.array_keys() else None
        self.padding = group["padding"] if "padding" in group.array_keys() else None
        self.has_boxes = self.bbox is not None
        self.image_shape = tuple(self.image.shape[1:])
        self.labels_ = _class_indices(self.label[:], self.url)
        self.num_classes = int(group.attrs.get("num_classes", self.labels_.max() + 1))
        names = group.attrs.get("classes")
        self.class_names = [str(n) for n in names] if isinstance(names, list) else None

    def __len__(self) -> int:
        return self.image.shape[0]

    def labels(self) -> np.ndarray:
        return self.labels_

    def _load(self, indices: np.ndarray) -> Batch:
        raw = self.image.get_orthogonal_selection((indices,))
        image = torch.from_numpy(
            raw.astype(np.float32) / 255 if raw.dtype == np.uint8 else raw.astype(np.float32)
        )
        bbox = None
        if self.has_boxes:
            bbox = torch.from_numpy(self.bbox.get_orthogonal_selection((indices,)).astype(np.int64))
        padding = None
        if self.padding is not None:
            padding = self.padding.get_orthogonal_selection((indices,)).astype(bool)
        return Batch(indices, image, torch.from_numpy(self.labels_[indices]), bbox, None, padding)

    def _fingerprint(self) -> str:
        """From the image array's listing (each object's ETag, or size and mtime) and the
        labels and boxes: no image is read."""
        h = hashlib.sha256(b"zarr;")
        fs, path = filesystem(self.url)
        folder = f"{path.rstrip('/')}/{self.image.path}"
        for key, info in sorted(fs.find(folder, detail=True).items()):
            h.update(f"{key.removeprefix(folder)}:{object_tag(info)};".encode())
        h.update(self.labels_.tobytes())
        if self.bbox is not None:
            h.update(np.ascontiguousarray(self.bbox[:]).tobytes())
        return h.hexdigest()
