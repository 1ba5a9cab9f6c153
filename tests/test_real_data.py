"""Real models and data (issue 21): warnings for degenerate models and maps in the CLI, the
store and the report; a 224x224 audit whose report shows maps at size with the boxes drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from browser import require_chromium, visit
from PIL import Image

import salaudit.flows.audit  # noqa: F401  (Prefect binds its log handler at first import)
from salaudit.flows.cli import main
from salaudit.pipeline import checks
from salaudit.store import schema
from salaudit.store.store import Store

CYAN = np.array([0, 229, 255])


def test_a_zero_head_vit_and_its_all_zero_relex_warn_in_the_cli_store_and_report(tmp_path, capsys):
    store = str(tmp_path / "vit")
    argv = ["explain", "--model", "python:support:zero_head_vit", "--methods", "grad,relex"]
    assert main([*argv, "--limit", "4", "--shard-size", "2", "--store", store, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "salaudit: warning: model: constant logits: all 4 checked samples" in err
    assert "salaudit: warning: relex: all-zero maps on 4 of 4 samples" in err
    assert "salaudit: warning: grad: all-zero maps on 4 of 4 samples" in err
    # the store: every logit vector the same, every map's state "all zero" (1)
    found = xr.open_zarr(store, group=schema.CHECKS, chunks=None)
    assert (found["logit_range"].values == 0).all()
    assert len(set(found["logit_digest"].values.tolist())) == 1
    assert (found["map_relex"].values[:, 0] == checks.ZERO).all()
    lines = checks.warnings(Store(store))
    assert len(lines) == 3 and lines[0].startswith("model: constant logits")
    assert main(["report", "--store", store]) == 0
    html = Path(f"{store}-report/index.html").read_text()
    assert '<section id="warnings"><h2>Warnings</h2><ul class="warnings' in html
    assert "relex: all-zero maps on 4 of 4 samples" in html
    assert "(all zero)" not in html and html.count(">all zero<") == 8  # 2 methods x 4 samples


def test_checks_by_hand(tmp_path):
    """States and digests from known maps: zero, NaN, infinite, identical under two names."""
    store = Store.open(str(tmp_path / "s"), {"model_fingerprint": "m"})
    samples = np.array([10, 11, 12])
    schema.layout_checks(store, samples, 3, ["a", "b", "c"])
    store.require_coordinate(schema.INPUTS, "sample", samples)
    fine = np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2) + 1
    maps_b = fine.copy()
    maps_b[1] = 0
    maps_b[2, 0, 0, 0] = np.inf
    checks.write_map_checks(store, "a", 0, fine)
    checks.write_map_checks(store, "b", 0, maps_b)
    checks.write_map_checks(store, "c", 0, fine.copy())  # bitwise a's maps
    state = store.read(schema.check("map_b"))[:, 0]
    assert state.tolist() == [checks.FINE, checks.ZERO, checks.NONFINITE]
    assert store.read(schema.check("map_a"))[0, 1] == store.read(schema.check("map_b"))[0, 1]
    assert checks.warnings(store) == [
        "b: all-zero maps on 1 of 3 samples: dataset indices 11",
        "b: non-finite (NaN or infinite) maps on 1 of 3 samples: dataset indices 12",
        "c: maps identical to a's on all 3 samples both have (one method under two names, or "
        "a setting that changes nothing)",
    ]


def _photographs(root: Path) -> dict[str, list[int]]:
    """Images of mixed sizes in two classes, each with a box in its own pixels."""
    rng = np.random.default_rng(0)
    table = {}
    for cls, sizes in (("cat", [(300, 260), (240, 320)]), ("dog", [(256, 256)])):
        (root / cls).mkdir(parents=True)
        for j, (h, w) in enumerate(sizes):
            grey = rng.integers(60, 200, (h, w, 1), dtype=np.uint8).repeat(3, 2)
            Image.fromarray(grey).save(root / cls / f"{j}.jpg", quality=95)
            table[f"{cls}/{j}.jpg"] = [h // 4, w // 4, h // 2, w // 2]
    (root / "boxes.json").write_text(json.dumps(table))
    return table


@pytest.mark.slow
def test_a_224_audit_report_shows_maps_at_size_with_their_boxes(tmp_path, capsys):
    require_chromium()
    _photographs(tmp_path / "photos")
    store = tmp_path / "store"
    spec = {
        "model": "python:support:cnn224",
        "data": f"folder:{tmp_path / 'photos'}?resize=256&crop=224&boxes=boxes.json",
        "selection": {"mode": "first", "n": 3},
        "methods": {"grad": {}, "ig": {"n_steps": 4}},
        "attacks": [],
        "metrics": ["localisation"],
        "shard_size": 2,
        "cluster": "local",
        "workers": 1,
        "store": {"url": str(store)},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["audit", str(tmp_path / "spec.yaml"), "--quiet"]) == 0
    capsys.readouterr()
    boxes = xr.open_zarr(store, group="inputs", chunks=None)["bbox"].values
    out = Path(f"{store}-report")
    html = (out / "index.html").read_text()
    assert "label cat, predicted" in html and "label dog, predicted" in html
    assert "no link: the temporary Prefect server ended with it" in html
    shot = tmp_path / "tile.png"
    page = visit((out / "index.html").as_uri(), element_shots=(("table.maps img", shot),))
    assert page.problems == []
    tiles = [i for i in page.images if "/maps/" in i["src"]]
    assert len(tiles) == 3 * 3  # per sample the image and 2 maps
    assert all(i["complete"] and i["width"] >= 160 for i in tiles), tiles
    # the first image's box, outlined in cyan, where the stored box says
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    scale = pixels.shape[1] / 224
    y0, x0, y1, x1 = boxes[0]
    cyan = np.abs(pixels - CYAN).max(2) < 60
    top_edge = cyan[
        round(y0 * scale) : round(y0 * scale) + 3, round(x0 * scale) : round(x1 * scale)
    ]
    assert top_edge.any(0).mean() > 0.9  # the box's top edge is drawn along its width
    inside = cyan[
        round((y0 + 4) * scale) : round((y1 - 4) * scale),
        round((x0 + 4) * scale) : round((x1 - 4) * scale),
    ]
    assert not inside.any()  # and the image inside it is not painted over
    assert not cyan[: round(y0 * scale) - 3].any()  # nothing cyan above the box


def test_gradcam_on_a_vit_is_refused_before_anything_is_written(tmp_path, capsys):
    argv = ["explain", "--model", "python:support:zero_head_vit", "--methods", "gradcam"]
    assert main([*argv, "--limit", "2", "--store", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a transformer: its last convolution 'conv_proj'" in err
    assert "--param gradcam.layer=" in err
    assert not (tmp_path / "x").exists()


def test_grey_folder_data_for_a_one_channel_model_is_shown_grey_with_names(tmp_path, capsys):
    root = tmp_path / "photos"
    rng = np.random.default_rng(2)
    for cls in ("ant", "bee"):
        (root / cls).mkdir(parents=True)
        rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / cls / "0.png")
    (root / "boxes.json").write_text(json.dumps({"bee/0.png": [5, 10, 30, 40]}))
    store = str(tmp_path / "s")
    data = f"folder:{root}?resize=32&crop=32&mode=L&boxes=boxes.json"
    argv = ["explain", "--model", "python:support:grey_cnn", "--data", data, "--methods", "grad"]
    assert main([*argv, "--select", "first", "--limit", "2", "--store", store, "--quiet"]) == 0
    image = xr.open_zarr(store, group="inputs", chunks=None)["image"]
    assert image.shape == (2, 1, 32, 32)
    assert Store(store).attrs()["label_names"] == ["ant", "bee"]
    png = tmp_path / "bee.png"
    assert main(["show", "--store", store, "--sample", "1", "--out", str(png)]) == 0
    shown = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    left = shown[:, : shown.shape[1] // 2 - 20]  # the image panel
    cyan = np.abs(left - CYAN).max(2) < 60
    grey = (np.ptp(left, axis=2) <= 2) | cyan | (left.min(2) > 245)  # grey, box or background
    assert grey.mean() > 0.97 and cyan.any()


def test_never_computed_and_degenerate_maps_are_marked_not_drawn_black():
    from salaudit.report.display import display_map, map_rgb, map_state

    never = np.full((3, 32, 32), np.nan, np.float32)
    assert map_state(never) == "not computed" and map_state(np.zeros((3, 4, 4))) == "all zero"
    partial = np.ones((3, 4, 4))
    partial[0, 0, 0] = np.inf
    assert map_state(partial) == "not finite" and map_state(np.ones((1, 2, 2))) == ""
    hatched = map_rgb(display_map(never))
    assert set(np.unique(hatched).tolist()) == {200, 235}  # light grey stripes, never black
