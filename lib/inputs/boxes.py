"""Bounding boxes of image folders: read from a JSON table or PASCAL-VOC XML files, moved
with every resize and crop.

A box is (y0, x0, y1, x1) in pixels, ends exclusive; (-1, -1, -1, -1) means "no box".
"""

from __future__ import annotations

import json
import posixpath
from xml.etree import ElementTree

import numpy as np

from ..errors import SalauditError

NO_BOX = (-1, -1, -1, -1)


def resolve(root: str, name: str) -> str:
    """`boxes=` as given: absolute (a local absolute path or a URL) or relative to the folder."""
    return name if name.startswith("/") or "://" in name else posixpath.join(root, name)


def checked(box, where: str) -> np.ndarray:
    """One box as float64 (4,), refused unless it is four numbers with y0 < y1 and x0 < x1."""
    try:
        b = np.asarray(box, dtype=np.float64).reshape(4)
    except (TypeError, ValueError):
        raise SalauditError(
            f"box {box!r} of {where} is not four numbers; write [y0, x0, y1, x1] in pixels"
        ) from None
    if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise SalauditError(
            f"box {b.tolist()} of {where} is empty or not finite; write [y0, x0, y1, x1] with "
            "y0 < y1 and x0 < x1 (ends exclusive)"
        )
    return b


def read_table(fs, path: str, url: str, files: list[str]) -> dict[str, np.ndarray]:
    """A JSON table `{image path relative to the folder: [y0, x0, y1, x1]}`, checked."""
    try:
        table = json.loads(fs.cat_file(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SalauditError(
            f"boxes file {url} is not valid JSON ({e}); fix or replace it"
        ) from None
    if not isinstance(table, dict):
        raise SalauditError(
            f"boxes file {url} holds a {type(table).__name__}; write an object "
            '{"<class>/<image>": [y0, x0, y1, x1], ...}'
        )
    known = set(files)
    boxes = {rel: checked(b, f"{rel} in {url}") for rel, b in table.items() if rel in known}
    if table and not boxes:
        raise SalauditError(
            f"boxes file {url} names no image of the folder (e.g. {next(iter(table))!r}); its "
            f"keys are paths relative to the folder, like {files[0]!r}"
        )
    return boxes


def match_xml(listing: list[str], folder: str, files: list[str]) -> dict[str, str]:
    """Each image's PASCAL-VOC XML file in `listing` (paths under `folder`): the one at the
    image's relative path with .xml, else the one named like the image (as ILSVRC ships them)."""
    by_rel = {p[len(folder) + 1 :].rsplit(".", 1)[0]: p for p in listing if p.endswith(".xml")}
    by_stem: dict[str, str] = {}
    for rel, p in by_rel.items():
        by_stem.setdefault(posixpath.basename(rel), p)
    found = {}
    for rel in files:
        key = rel.rsplit(".", 1)[0]
        hit = by_rel.get(key) or by_stem.get(posixpath.basename(key))
        if hit:
            found[rel] = hit
    return found


def read_voc(data: bytes, where: str, size: tuple[int, int]) -> np.ndarray:
    """The box enclosing every object of one PASCAL-VOC annotation, 0-based and ends exclusive
    (VOC's corners are 1-based and inclusive); the annotation's size must be the image's."""
    try:
        root = ElementTree.fromstring(data)
        objects = root.findall("object/bndbox")
        corners = [
            [float(o.find(k).text) for k in ("ymin", "xmin", "ymax", "xmax")] for o in objects
        ]
        w, h = (int(root.find(f"size/{k}").text) for k in ("width", "height"))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError):
        raise SalauditError(
            f"{where} is not a PASCAL-VOC annotation with <size> and <object><bndbox> "
            "(xmin, ymin, xmax, ymax); fix or remove it"
        ) from None
    if (w, h) != size:
        raise SalauditError(
            f"{where} describes a {w}x{h} image, but the image is {size[0]}x{size[1]}; the "
            "annotation belongs to another image"
        )
    if not corners:
        return np.asarray(NO_BOX, dtype=np.float64)
    c = np.asarray(corners)
    box = np.array([c[:, 0].min() - 1, c[:, 1].min() - 1, c[:, 2].max(), c[:, 3].max()])
    return checked(box, where)


def transform(box: np.ndarray, scale: tuple[float, float], offset: tuple[int, int], size):
    """A box (float, original pixels) scaled by (sy, sx), shifted by -(top, left), rounded
    and clipped to the (H, W) image; a box left with no area is no box."""
    if box[0] < 0 and (box == NO_BOX).all():
        return np.asarray(NO_BOX, dtype=np.int64)
    sy, sx = scale
    top, left = offset
    moved = np.array([box[0] * sy - top, box[1] * sx - left, box[2] * sy - top, box[3] * sx - left])
    h, w = size
    out = np.clip(np.round(moved), 0, [h, w, h, w]).astype(np.int64)
    if out[2] <= out[0] or out[3] <= out[1]:
        return np.asarray(NO_BOX, dtype=np.int64)
    return out
