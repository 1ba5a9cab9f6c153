"""Data sets: the builtin digit scenes, image folders, Zarr data, validation, selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from salaudit import load_dataset
from salaudit.errors import SalauditError
from salaudit.inputs.scenes import _digit_split, digit_scenes
from salaudit.inputs.selection import Selection, select_samples


def test_digit_images_are_split_disjointly_before_compositing():
    split = _digit_split(0)
    train = {d.tobytes() for d in split["train"][0]}
    test = {d.tobytes() for d in split["test"][0]}
    # sklearn's digits hold a few exact duplicates; no test digit image may appear in training
    # beyond those that are identical across writers in the source itself
    from sklearn.datasets import load_digits

    source = load_digits().images / 16.0
    dupes = len(source) - len({d.tobytes() for d in source})
    assert len(train & test) <= dupes
    assert len(split["train"][0]) + len(split["test"][0]) == 1797


def test_scenes_are_deterministic_rgb_32_with_labels_and_boxes():
    a, b = digit_scenes("test"), digit_scenes("test")
    assert a.images.shape == (2000, 3, 32, 32) and a.images.dtype == np.uint8
    assert len(digit_scenes("train").images) >= 10000
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) == set(range(10))
    y0, x0, y1, x1 = a.boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y1 <= 32).all() and (x1 <= 32).all()
    assert ((y1 - y0) >= 4).all() and ((x1 - x0) >= 2).all()


def test_digit_contrasts_with_background():
    """Inside the box the digit's strokes differ clearly from the pixels around them."""
    s = digit_scenes("test")
    img = s.images[:200].astype(float) / 255
    lum = img.transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114])
    spreads = []
    for i, (y0, x0, y1, x1) in enumerate(s.boxes[:200]):
        inside = lum[i, y0:y1, x0:x1]
        spreads.append(np.percentile(inside, 95) - np.percentile(inside, 5))
    assert np.median(spreads) > 0.4


def test_builtin_dataset_spec_and_fingerprint(dataset):
    assert len(dataset) == 2000 and dataset.num_classes == 10 and dataset.has_boxes
    b = dataset.load([0, 5])
    assert b.image.dtype == torch.float32 and b.image.shape == (2, 3, 32, 32)
    assert b.image.min() >= 0 and b.image.max() <= 1
    assert dataset.fingerprint == load_dataset("builtin:digit-scenes?split=test").fingerprint
    assert dataset.fingerprint != load_dataset("builtin:digit-scenes?split=train").fingerprint


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:nope", "builtin:digit-scenes"),
        ("hdf5:foo", "builtin:..., folder:..., zarr:..., csv:..., parquet:..."),
        ("builtin:digit-scenes?split=val", "splits train and test"),
        ("builtin:digit-scenes?size=3", "allowed: ['split']"),
    ],
)
def test_bad_data_specs_list_the_valid_ones(spec, message):
    with pytest.raises(SalauditError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_dataset(spec)


def _write_folder(root, sizes=((40, 50), (60, 40)), boxes=True):
    rng = np.random.default_rng(0)
    table = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for j, (h, w) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"img{j}.png")
            table[f"{cls}/img{j}.png"] = [4, 6, 20, 30]
    if boxes:
        (root / "boxes.json").write_text(json.dumps(table))
    return table


def test_image_folder_with_resize_crop_and_boxes(tmp_path):
    _write_folder(tmp_path)
    ds = load_dataset(f"folder:{tmp_path}?resize=32&crop=32&boxes=boxes.json")
    assert len(ds) == 4 and ds.num_classes == 2 and ds.classes == ["cat", "dog"]
    assert ds.labels().tolist() == [0, 0, 1, 1] and ds.has_boxes
    b = ds.load([0, 1, 2, 3])
    assert b.image.shape == (4, 3, 32, 32)
    # img0 is 40x50 (h x w): scale 32/40 = 0.8, width 40 -> crop offset left (40 - 32) // 2 = 4
    assert b.bbox[0].tolist() == [round(4 * 0.8), round(6 * 0.8) - 4, 16, 24 - 4]
    raw = np.asarray(Image.open(tmp_path / "cat" / "img0.png").resize((40, 32), Image.BILINEAR))
    assert np.allclose(b.image[0].permute(1, 2, 0).numpy(), raw[:, 4:36] / 255, atol=1e-6)


# (h, w) of the original image, its box, and the box after resize=32&crop=32, by hand
HAND_BOXES = [
    # 40x50: scale 0.8 -> 32x40, crop left 4: [3.2, 4.8 - 4, 16, 24 - 4]
    ((40, 50), [4, 6, 20, 30], [3, 1, 16, 20]),
    # 60x40: scale 0.8 -> 48x32, crop top 8: [3.2 - 8, 4.8, 16 - 8, 24], clipped at 0
    ((60, 40), [4, 6, 20, 30], [0, 5, 8, 24]),
    # 45x70: 32/45 -> 32x50 (50/70 across), crop left 9: [7.11, 5.29, 28.44, 33.86], x1 clipped
    ((45, 70), [10, 20, 40, 60], [7, 5, 28, 32]),
    # 60x40: [50, 0, 60, 10] -> [32, 0, 40, 8], below the crop: no box
    ((60, 40), [50, 0, 60, 10], [-1, -1, -1, -1]),
]


def _hand_folder(root):
    rng = np.random.default_rng(1)
    table = {}
    (root / "a").mkdir(parents=True)
    for j, ((h, w), box, _) in enumerate(HAND_BOXES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"a/{j}.png")
        table[f"a/{j}.png"] = box
    return table


def test_boxes_follow_resize_and_crop(tmp_path):
    from salaudit.metrics import localisation

    table = _hand_folder(tmp_path)
    (tmp_path / "boxes.json").write_text(json.dumps(table))
    ds = load_dataset(f"folder:{tmp_path}?resize=32&crop=32&boxes=boxes.json")
    b = ds.load(np.arange(len(HAND_BOXES)))
    assert b.bbox.tolist() == [want for _, _, want in HAND_BOXES]
    # a map that is 1 exactly inside the stored box localises perfectly
    inside = torch.zeros(len(HAND_BOXES), 1, 32, 32)
    for i, (y0, x0, y1, x1) in enumerate(b.bbox.tolist()[:3]):
        inside[i, :, y0:y1, x0:x1] = 1
    out = localisation.localisation(inside, b.bbox)
    for key in ("loc", "energy_game", "positive_percentage"):
        assert out[key][:3].tolist() == [1.0, 1.0, 1.0]
        assert out[key][3].isnan()  # the box that left the crop is no box
    # the store holds the same boxes (an explain of the folder with the default model)
    from salaudit.flows.cli import main

    store = str(tmp_path / "store")
    spec = f"folder:{tmp_path}?resize=32&crop=32&boxes=boxes.json"
    argv = ["explain", "--data", spec, "--methods", "grad", "--select", "first", "--quiet"]
    assert main([*argv, "--limit", "4", "--store", store]) == 0
    stored = zarr.open_group(store, mode="r")["inputs/bbox"][...]
    assert stored.tolist() == [want for _, _, want in HAND_BOXES]
    # absolute paths work; boxes.json is not read unless asked for
    absolute = load_dataset(f"folder:{tmp_path}?resize=32&crop=32&boxes={tmp_path}/boxes.json")
    assert torch.equal(absolute.load([2]).bbox, b.bbox[2:3])
    assert not load_dataset(f"folder:{tmp_path}?resize=32&crop=32").has_boxes


def _voc(w, h, boxes):
    objects = "".join(
        f"<object><name>n0</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for y0, x0, y1, x1 in boxes
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"


def test_pascal_voc_boxes_one_xml_per_image(tmp_path):
    _hand_folder(tmp_path / "imgs")
    ann = tmp_path / "Annotations"
    ann.mkdir()
    # VOC corners are 1-based, inclusive: [4, 6, 20, 30] is ymin 5, xmin 7, ymax 20, xmax 30
    (ann / "0.xml").write_text(_voc(50, 40, [(5, 7, 20, 30)]))
    # two objects: the box enclosing both
    (ann / "2.xml").write_text(_voc(70, 45, [(11, 21, 30, 40), (20, 30, 40, 60)]))
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}?resize=32&crop=32&boxes={ann}")
    assert ds.has_boxes
    assert ds.load([0, 1, 2]).bbox.tolist() == [[3, 1, 16, 20], [-1, -1, -1, -1], [7, 5, 28, 32]]
    (ann / "2.xml").write_text(_voc(71, 45, [(11, 21, 30, 40)]))
    with pytest.raises(SalauditError, match="describes a 71x45 image, but the image is 70x45"):
        ds.load([2])
    (ann / "2.xml").write_text("<annotation><size>")
    with pytest.raises(SalauditError, match="2.xml is not a PASCAL-VOC annotation"):
        ds.load([2])


@pytest.mark.parametrize(
    ("boxes", "content", "message"),
    [
        ("boxes.jsn", None, "boxes file .*boxes.jsn does not exist; boxes= names a JSON file"),
        ("/nowhere/boxes.json", None, "boxes file /nowhere/boxes.json does not exist"),
        ("b.json", "{not json", "is not valid JSON"),
        ("b.json", "[1, 2]", "holds a list; write an object"),
        ("b.json", '{"cat/x.png": [1, 2, 3, 4]}', "names no image of the folder"),
        (
            "b.json",
            '{"a/0.png": [5, 2, 3, 4]}',
            r"box \[5.0, 2.0, 3.0, 4.0\] of a/0.png .* is empty",
        ),
        ("b.json", '{"a/0.png": [1, 2, 3]}', "is not four numbers"),
        ("ann", "dir", "has no XML file named like an image"),
    ],
)
def test_bad_boxes_are_errors(tmp_path, boxes, content, message):
    _hand_folder(tmp_path)
    if content == "dir":
        (tmp_path / boxes).mkdir()
        (tmp_path / boxes / "other.xml").write_text(_voc(1, 1, []))
    elif content is not None:
        (tmp_path / boxes).write_text(content)
    with pytest.raises(SalauditError, match=message):
        load_dataset(f"folder:{tmp_path}?resize=32&crop=32&boxes={boxes}")


def test_folder_mode_l_gives_one_grey_channel(tmp_path):
    _hand_folder(tmp_path)
    ds = load_dataset(f"folder:{tmp_path}?resize=32&crop=32&mode=L")
    assert ds.image_shape == (1, 32, 32)
    grey = Image.open(tmp_path / "a/0.png").convert("L").resize((40, 32), Image.BILINEAR)
    want = np.asarray(grey, dtype=np.float32)[:, 4:36] / 255
    assert np.allclose(ds.load([0]).image[0, 0].numpy(), want, atol=1e-6)
    with pytest.raises(SalauditError, match="mode='CMYK' is not one of RGB, L"):
        load_dataset(f"folder:{tmp_path}?resize=32&crop=32&mode=CMYK")


def test_image_folder_of_mixed_sizes_without_resize_is_refused(tmp_path):
    _write_folder(tmp_path, boxes=False)
    with pytest.raises(SalauditError, match="resize"):
        load_dataset(f"folder:{tmp_path}").load([0, 1])


def test_image_folder_on_s3(bucket, tmp_path):
    import s3fs

    _write_folder(tmp_path)
    fs = s3fs.S3FileSystem()
    fs.put(str(tmp_path) + "/", f"{bucket}/imgs/", recursive=True)
    remote = load_dataset(f"folder:{bucket}/imgs?resize=32&crop=32&boxes=boxes.json")
    local = load_dataset(f"folder:{tmp_path}?resize=32&crop=32&boxes=boxes.json")
    assert remote.files == local.files
    assert torch.equal(remote.load([0, 3]).image, local.load([0, 3]).image)
    assert torch.equal(remote.load([1]).bbox, local.load([1]).bbox)


def test_zarr_dataset(tmp_path):
    import zarr

    rng = np.random.default_rng(0)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("image", data=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    g.create_array("label", data=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_dataset(f"zarr:{tmp_path / 'd.zarr'}")
    assert len(ds) == 6 and ds.num_classes == 3 and not ds.has_boxes
    b = ds.load([1, 4])
    assert torch.allclose(b.image * 255, torch.from_numpy(g["image"][[1, 4]]).float())


def test_nan_and_out_of_range_images_are_refused(tmp_path):
    import zarr

    img = np.full((4, 3, 8, 8), 0.5, dtype=np.float32)
    img[1, 0, 0, 0] = np.nan
    img[3, 0, 0, 0] = 1.5
    g = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w")
    g.create_array("image", data=img)
    g.create_array("label", data=np.zeros(4, dtype=np.int64))
    ds = load_dataset(f"zarr:{tmp_path / 'bad.zarr'}")
    ds.load([0, 2])
    with pytest.raises(SalauditError, match=r"samples \[1\] contain NaN"):
        ds.load([0, 1])
    with pytest.raises(SalauditError, match=r"samples \[3\] have values .* outside the pixel"):
        ds.load([3])


def test_selection_modes(dataset, model):
    labels = dataset.labels()
    first = select_samples(dataset, Selection("first", 10))
    assert first.tolist() == list(range(10))
    r1 = select_samples(dataset, Selection("random", 50, seed=3))
    r2 = select_samples(dataset, Selection("random", 50, seed=3))
    r3 = select_samples(dataset, Selection("random", 50, seed=4))
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3) and len(set(r1)) == 50
    strat = select_samples(dataset, Selection("stratified", 40, seed=0))
    assert np.bincount(labels[strat], minlength=10).tolist() == [4] * 10
    correct = select_samples(dataset, Selection.parse("correct", 30, 0), model)
    with torch.no_grad():
        pred = model(dataset.load(correct).image).argmax(1).numpy()
    assert (pred == labels[correct]).all() and len(correct) == 30
    with pytest.raises(SalauditError, match="unknown selection"):
        Selection("best", 3)
