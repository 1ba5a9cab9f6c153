"""DANCE decoys: masks, the decoys' defining properties, proxies, aggregation, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from salaudit import load_model
from salaudit.engine.layers import receptive_field
from salaudit.errors import SalauditError
from salaudit.methods.decoys import (
    DecoyConfig,
    aggregate,
    make_decoys,
    masks_for,
    pack_masks,
    population_size,
)
from salaudit.methods.gradients import Context
from salaudit.methods.registry import get_method

FAST = {"stride": 3}  # non-overlapping patches: ~9x fewer decoys than the default stride 1


def patches(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, x0, y1, x1) of the 8-connected components of a mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    return [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels)]


@pytest.mark.parametrize(
    ("size", "patch", "stride", "spacing", "m", "n"),
    [
        (32, 3, 1, 6, 5, None),
        (32, 3, 3, 6, 5, None),
        (20, 4, 2, 7, 3, None),
        (17, 3, 1, 4, 2, None),
        (32, 3, 1, 6, 25, 50),  # a budget of 50 masks: 900 positions, at most 25 per mask
        (32, 3, 1, 4, 64, 16),  # 16 masks: one per origin modulo 4, at most 8 x 8 patches
    ],
)
def test_masks_cover_every_pixel_with_spaced_patches(size, patch, stride, spacing, m, n):
    plan = pack_masks(size, size, patch, stride, spacing, None if n else m, n)
    masks = plan.masks.numpy()
    assert masks.any(0).all(), "some pixel is in no mask"
    assert n is None or plan.n == n
    for mask in masks:
        boxes = patches(mask)
        assert len(boxes) <= m
        for y0, x0, y1, x1 in boxes:
            assert (y1 - y0, x1 - x0) == (patch, patch) and mask[y0:y1, x0:x1].all()
        for a in range(len(boxes)):
            for b in range(a):
                dist = max(abs(boxes[a][0] - boxes[b][0]), abs(boxes[a][1] - boxes[b][1]))
                assert dist >= spacing
    # the index lists the mask's pixels, padded with the dropped slot H * W
    for mask, index in zip(plan.masks, plan.index, strict=True):
        real = index[index < size * size]
        assert torch.equal(torch.sort(real).values, torch.nonzero(mask.flatten()).flatten())


def test_without_a_budget_masks_keep_patches_one_receptive_field_apart(model):
    cfg = DecoyConfig(decoys=None).resolved(model)
    rf = max(receptive_field(model, cfg.layer))
    assert rf == 4 and cfg.layer == "pool1" and cfg.patch == 3 and cfg.stride == 1
    plan = masks_for(model, cfg)
    share = plan.masks.flatten(1).float().mean(1)
    assert share.max() <= cfg.mask_fraction and plan.masks.any(0).all()
    for mask in plan.masks[:20].numpy():
        boxes = patches(mask)
        gaps = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) - 3 for a in boxes for b in boxes if a != b]
        assert min(gaps, default=99) >= rf - 1  # no unit of pool1 sees two patches


@pytest.mark.parametrize(
    ("decoys", "spacing", "per_mask", "lr"),
    # 900 patch positions at pool1 (RF 4): spacing 6 needs 36 masks, so N = 72 decoys
    [(2, 1, 900, 0.001), (16, 2, 113, 0.001), (64, 5, 36, 0.001), (72, 6, 25, 0.001)],
)
def test_a_budget_sets_the_population_and_packs_as_widely_as_it_allows(
    model, decoys, spacing, per_mask, lr
):
    cfg = DecoyConfig(decoys=decoys).resolved(model)
    assert (cfg.spacing, cfg.per_mask, cfg.lr) == (spacing, per_mask, lr)
    plan = masks_for(model, cfg)
    assert plan.n == decoys // 2 and plan.masks.any(0).all()
    assert 2 * plan.n + 1 == population_size(model, cfg)
    blur = DecoyConfig("blur", decoys=decoys).resolved(model)
    assert masks_for(model, blur).n == decoys  # one proxy decoy per mask
    params = cfg.params()
    assert (params["decoys"], params["spacing"], params["per_mask"]) == (decoys, spacing, per_mask)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"decoys": 7}, "even number"),
        ({"decoys": 0}, "even number"),
        ({"decoys": 4000}, "more than the 900 patch positions"),
        ({"decoys": 16, "spacing": 6}, "needs more masks"),
    ],
)
def test_a_budget_the_input_cannot_hold_is_refused(model, settings, words):
    with pytest.raises(SalauditError, match=words):
        DecoyConfig(**settings).resolved(model)


@pytest.fixture(scope="module")
def fast_decoys(model, batch64):
    x, target, idx = batch64
    cfg = DecoyConfig(**FAST).resolved(model)
    ctx = Context([f"0/{int(i)}/decoys-dance" for i in idx[:4]])
    return x[:4], target[:4], cfg, make_decoys(model, x[:4], cfg, ctx)


def test_decoys_equal_x_outside_their_mask_and_stay_in_range(model, fast_decoys):
    x, _, cfg, d = fast_decoys
    plan = masks_for(model, cfg)
    assert d.population.shape == (4, 2 * plan.n, 3, 32, 32)
    outside = ~plan.masks[d.mask_index][None, :, None].expand_as(d.population)
    assert torch.equal(d.population[outside], x[:, None].expand_as(d.population)[outside])
    assert d.population.min() >= 0 and d.population.max() <= 1
    assert torch.equal(d.sign[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_optimised_decoys_keep_the_representation_and_move_the_pixels(model, fast_decoys):
    x, _, cfg, d = fast_decoys
    ok = d.success
    assert ok.float().mean() >= 0.95
    assert (d.rep_diff[ok] <= cfg.eps + 1e-6).all()
    assert (d.mean_shift[ok] > 0.001).float().mean() > 0.9  # x~ = x would trivially succeed
    up = d.population[:, d.sign > 0] - x[:, None]
    down = d.population[:, d.sign < 0] - x[:, None]
    assert up.sum() > 0 > down.sum()


def test_proxies_fill_the_mask_as_specified(model, batch64):
    x = batch64[0][:2]
    ctx = Context(["a", "b"])
    for gen in ("blur", "constant", "noise"):
        cfg = DecoyConfig(gen, **FAST).resolved(model)
        d = make_decoys(model, x, cfg, ctx)
        plan = masks_for(model, cfg)
        inside = plan.masks[None, :, None].expand_as(d.population)
        assert d.population.shape[1] == plan.n and torch.isnan(d.lam).all()
        if gen == "blur":
            fill = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)[:, None]
        elif gen == "constant":
            fill = x.mean(dim=(2, 3), keepdim=True)[:, None]
        else:
            assert (d.population[inside] != x[:, None].expand_as(d.population)[inside]).any()
            assert d.population.min() >= 0 and d.population.max() <= 1
            again = make_decoys(model, x, cfg, ctx)
            assert torch.equal(again.population, d.population)
            continue
        assert torch.allclose(d.population[inside], fill.expand_as(d.population)[inside])


def test_dance_grad_is_exactly_zero_on_a_linear_model(batch64):
    linear = load_model("python:support:linear_model")
    x = batch64[0][:3]
    target = linear(x).argmax(1)
    method = get_method("dance-grad", decoys={"layer": "1", **FAST}).resolved(linear)
    out = method(linear, x, target)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0


def test_aggregation_range_and_mean():
    maps = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]], [[2.0, 5.0]]]).permute(1, 0, 2)
    assert torch.equal(aggregate(maps, "range"), torch.tensor([[2.0, 7.0]]))
    assert torch.allclose(aggregate(maps, "mean"), torch.tensor([[2.0, 1.0]]))


def test_decoy_results_do_not_depend_on_batching(model, batch64):
    """Each image's decoys are optimised in chunks of its own, so which other images share the
    batch cannot flip a round decision (the micro-batch size itself is a setting that may)."""
    x, t, idx = batch64
    x, t = x[:4], t[:4]
    keys = [f"0/{int(i)}/x" for i in idx[:4]]
    method = get_method("dance-grad", decoys=FAST).resolved(model)
    whole = method(model, x, t, Context(keys, micro_batch=32))
    singles = [
        method(model, x[i : i + 1], t[i : i + 1], Context(keys[i : i + 1], 32)) for i in range(4)
    ]
    shards = [
        method(model, x[s : s + 2], t[s : s + 2], Context(keys[s : s + 2], 32)) for s in (0, 2)
    ]
    scale = whole.abs().max()
    assert (whole - torch.cat(singles)).abs().max() <= 1e-4 * scale
    assert (whole - torch.cat(shards)).abs().max() <= 1e-4 * scale


@pytest.mark.slow
def test_default_decoys_on_64_images(model, batch64):
    """Acceptance: >= 95% of optimised decoys meet the default eps at the default layer, and
    dance-grad maps are non-zero and differ from grad on >= 95% of the images."""
    x, t, idx = batch64
    method = get_method("dance-grad").resolved(model)
    ctx = Context([f"0/{int(i)}/decoys-dance" for i in idx])
    decoys = make_decoys(model, x, method.decoys, ctx)
    assert decoys.success.float().mean() >= 0.95
    assert (decoys.rep_diff[decoys.success] <= method.decoys.eps + 1e-6).all()
    plan = masks_for(model, method.decoys)
    outside = ~plan.masks[decoys.mask_index][None, :, None].expand_as(decoys.population)
    assert torch.equal(decoys.population[outside], x[:, None].expand_as(decoys.population)[outside])
    dance = method.aggregate(method.decoy_maps(model, x, t, decoys, ctx))
    grad = get_method("grad")(model, x, t)
    nonzero = dance.flatten(1).abs().amax(1) > 0
    different = ~torch.isclose(dance, grad, rtol=1e-3, atol=1e-6).flatten(1).all(1)
    assert (nonzero & different).float().mean() >= 0.95
