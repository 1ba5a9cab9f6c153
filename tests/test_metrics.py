"""Metrics and statistics: hand-computed values on tiny fixtures, agreement with scikit-image,
scipy, Captum and Quantus, and per-sample behaviour on the default model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from skimage.metrics import structural_similarity
from torch import nn

import salaudit as M
from salaudit.errors import SalauditError
from salaudit.inputs.models import PixelModel
from salaudit.methods.gradients import grad
from salaudit.methods.registry import method_pairs
from salaudit.methods.registry import references as reference_methods
from salaudit.metrics.catalogue import higher_is_better
from salaudit.metrics.localisation import _box_mask
from salaudit.metrics.stats import holm, paired_test


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def linear_model(w: torch.Tensor, bias0: float) -> PixelModel:
    """Two classes on 1xHxW images: logit_0 = sum(w * x) + bias0, logit_1 = 0, so
    p_0 = sigmoid(logit_0); no normalisation, so the baseline colour is 0."""
    h, wd = w.shape
    net = nn.Sequential(nn.Flatten(), nn.Linear(h * wd, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[0] = w.flatten()
        net[1].bias[0] = bias0
    return PixelModel(net, input_shape=(1, h, wd), num_classes=2).eval()


W22 = torch.tensor([[3.0, 2.0], [1.0, 0.0]])


@pytest.fixture(scope="module")
def small(batch64, model):
    """8 default test images, their targets and gradient maps."""
    x, target, _ = batch64
    x, target = x[:8], target[:8]
    return x, target, grad(model, x, target)


# ----------------------------------------------------------------------------- maps to masks


def test_saliency_mask_by_hand():
    t = torch.arange(101.0)
    e = torch.stack([t / 2, -t / 2]).view(1, 2, 1, 101)  # |E| summed over channels = t
    mask = M.saliency_mask(e)
    assert mask.shape == (1, 1, 1, 101)
    torch.testing.assert_close(mask.flatten(), t.clamp(max=99) / 99)  # 99th percentile = 99
    zero = M.saliency_mask(torch.zeros(2, 3, 4, 4))
    assert (zero == 0).all()
    relex = torch.rand(2, 1, 4, 4)
    assert torch.equal(M.saliency_mask(relex, is_mask=True), relex)
    three = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(M.saliency_mask(three, is_mask=True), three.mean(1, keepdim=True))


def test_saliency_mask_percentile_matches_numpy():
    e = torch.randn(3, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    mask = M.saliency_mask(e)
    for i in range(3):
        a = e[i].abs().sum(0).numpy()
        q = np.percentile(a, 99)
        np.testing.assert_allclose(mask[i, 0].numpy(), np.minimum(a, q) / q, rtol=1e-6)
    assert mask.max() == 1 and mask.min() >= 0


def test_top_fraction_by_hand():
    e = torch.tensor([[[[1.0, -5.0], [2.0, 0.0]], [[-3.0, 1.0], [2.0, 0.0]]]])  # max |E| 3 5 2 0
    assert M.top_fraction(e, 0.5).tolist() == [[[[1.0, 1.0], [0.0, 0.0]]]]
    assert M.top_fraction(e, 0.75).tolist() == [[[[1.0, 1.0], [1.0, 0.0]]]]
    assert M.top_fraction(e, 0.01).sum() == 1  # at least one pixel
    big = torch.randn(4, 3, 32, 32)
    assert (M.top_fraction(big, 0.2).flatten(1).sum(1) == 205).all()  # round(0.2 * 1024)


def test_top_k_over_ties_prefers_no_pixel_index():
    """A constant map: over many sample keys every pixel is kept equally often (an index
    rule keeps the first 16 of 64 always); one key always keeps the same pixels."""
    keys = [f"0/{i}/fidelity" for i in range(2000)]
    kept = M.top_fraction(torch.ones(len(keys), 1, 8, 8), 0.25, keys).flatten(1)
    assert (kept.sum(1) == 16).all()
    share = kept.mean(0)  # each pixel's share of the keys: binomial(2000, 0.25), sd 0.0097
    assert (share - 0.25).abs().max() < 0.05, share
    assert abs(float((kept * torch.arange(64)).sum(1).mean()) / 16 - 31.5) < 1.0
    again = M.top_fraction(torch.ones(2, 1, 8, 8), 0.25, keys[:2]).flatten(1)
    assert torch.equal(again, kept[:2]) and not torch.equal(kept[0], kept[1])
    # ties only among equals: the larger values always come first
    e = torch.zeros(3, 1, 4, 4)
    e[:, 0, 3, 3] = 1.0
    assert (M.top_fraction(e, 0.25, keys[:3])[:, 0, 3, 3] == 1).all()


def test_sensitivity_breaks_ties_alike_in_both_maps():
    """A clean and an attacked map that agree (a tied region included) have S_S = 0: both
    take their ties in the sample's one order."""
    e = torch.zeros(2, 3, 8, 8)
    e[:, :, :2] = 1.0  # 16 pixels above 48 tied zeros; top 20% = 13 -> chosen among the 16
    e[:, :, 2:4] = 0.5  # 16 more tied: a top 40% reaches into them
    x, x_adv = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    keys = ["0/1/sensitivity", "0/2/sensitivity"]
    for fraction in (0.2, 0.4):
        assert (M.sensitivity(e, e.clone(), x, x_adv, fraction, keys) == 0).all()


def test_masked_input_broadcasts_a_pixel_mask_over_channels():
    x = torch.rand(2, 3, 4, 4)
    mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
    b = torch.tensor([0.1, 0.2, 0.3])
    out = M.masked_input(x, mask, b)
    expected = torch.where(mask.bool(), x, b.view(1, 3, 1, 1).expand_as(x))
    torch.testing.assert_close(out, expected)
    with pytest.raises(SalauditError, match="does not fit"):
        M.masked_input(x, torch.rand(2, 1, 4, 5), b)


# ----------------------------------------------------------------------------- model metrics


def test_fidelity_by_hand():
    model = linear_model(W22, -3.0)
    x = torch.ones(1, 1, 2, 2)
    target = torch.tensor([0])
    # top 50% of the map W keeps the pixels of weight 3 and 2: logit 2 instead of 3
    f = M.fidelity(model, x, W22[None, None], target, fraction=0.5)
    torch.testing.assert_close(f, torch.tensor([math.log(sig(3) / sig(2))]))
    # removed pixels (weights 1 and 0) at baseline 0.5: logit 2.5
    f = M.fidelity(model, x, W22[None, None], target, baseline=0.5, fraction=0.5)
    torch.testing.assert_close(f, torch.tensor([math.log(sig(3) / sig(2.5))]))


def test_the_blur_baseline_is_scipys_gaussian_filter():
    """sigma = side / 16 (2 px at 32), truncated at 2 sigma, the border mirrored (scipy's
    `mirror` is torch's `reflect`)."""
    from scipy.ndimage import gaussian_filter

    from salaudit.metrics.masks import blurred

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, 2, 2), mode="mirror", truncate=2.0)
    np.testing.assert_allclose(blurred(x).numpy(), expected, atol=1e-5)


def test_fidelity_takes_each_named_baseline(model, small):
    from salaudit.metrics.masks import blurred

    x, target, e = small
    keys = [f"0/{i}/fidelity" for i in range(len(x))]

    def f(baseline):
        return M.fidelity(model, x, e, target, baseline=baseline, keys=keys)

    assert model.baseline_colour.abs().min() > 0.1  # the data's mean is not zero
    torch.testing.assert_close(f("mean"), f(None))
    torch.testing.assert_close(f("zero"), f(0.0))
    torch.testing.assert_close(f("blur"), f(blurred(x)))
    assert not torch.allclose(f("zero"), f("mean")) and not torch.allclose(f("blur"), f("mean"))
    with pytest.raises(SalauditError, match="mean, zero, blur"):
        f("grey")


def test_fidelity_of_a_keep_all_map_is_zero(model, small):
    x, target, e = small
    f = M.fidelity(model, x, e, target, fraction=1.0)
    torch.testing.assert_close(f, torch.zeros(len(x)), atol=1e-5, rtol=0)
    f20 = M.fidelity(model, x, e, target)
    assert f20.shape == (len(x),) and f20.isfinite().all() and (f20 != 0).any()


def test_deletion_preservation_by_hand():
    model = linear_model(W22, -3.0)
    x = torch.ones(1, 1, 2, 2)
    out = M.deletion_preservation(model, x, W22[None, None], torch.tensor([0]), step_fraction=0.25)
    # deletion removes weights 3, 2, 1, 0: logits 3, 0, -2, -3, -3; preservation 0, 1, 2, 3
    dz, pz = [3, 0, -2, -3, -3], [3, 3, 2, 0, -3]
    dc, pc = [sig(z) for z in dz], [sig(z) for z in pz]
    torch.testing.assert_close(out["deletion_curve"][0], torch.tensor(dc))
    torch.testing.assert_close(out["preservation_curve"][0], torch.tensor(pc))
    d = 0.25 * (dc[0] / 2 + sum(dc[1:4]) + dc[4] / 2)
    p = 0.25 * (pc[0] / 2 + sum(pc[1:4]) + pc[4] / 2)
    torch.testing.assert_close(out["deletion"], torch.tensor([d]))
    torch.testing.assert_close(out["preservation"], torch.tensor([p]))
    r = 1 / ((1 / p + 1 / (1 - d)) / 2)
    torch.testing.assert_close(out["r_score"], torch.tensor([r]))


def test_deletion_preservation_default_steps_and_order():
    """8x8 images: 1/64 of the pixels is one pixel per step, 65 points. With weights equal to
    the mask, deletion removes the largest first and preservation the smallest."""
    w = torch.arange(64.0).view(8, 8) / 64
    model = linear_model(w, -10.0)
    x = torch.ones(2, 1, 8, 8)
    masks = torch.stack([w, -w])[:, None]  # the second sample's mask reverses the order
    out = M.deletion_preservation(model, x, masks, torch.tensor([0, 0]))
    assert out["deletion_curve"].shape == (2, 65)
    total = w.sum().item()
    kept_after_deleting = [
        total - w.flatten().sort(descending=True).values[:k].sum() for k in range(65)
    ]
    expected = torch.tensor([sig(z - 10.0) for z in kept_after_deleting])
    torch.testing.assert_close(out["deletion_curve"][0], expected)
    torch.testing.assert_close(out["preservation_curve"][1], expected)
    assert out["deletion"][0] < out["preservation"][0]
    torch.testing.assert_close(out["deletion"][0], out["preservation"][1])


def test_bad_inputs_raise(model, small):
    x, target, e = small
    with pytest.raises(SalauditError, match="target"):
        M.fidelity(model, x, e, target[:3])
    with pytest.raises(SalauditError, match="does not fit"):
        M.fidelity(model, x, e[:, :, :16], target)
    with pytest.raises(SalauditError, match="baseline"):
        M.fidelity(model, x, e, target, baseline=torch.zeros(2))
    with pytest.raises(SalauditError, match="fraction"):
        M.top_fraction(e, 0.0)


def test_class_retrieval():
    model = linear_model(W22, -3.0)
    x = torch.ones(2, 1, 2, 2)
    masks = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    got = M.class_retrieval(model, x, masks, torch.tensor([0, 0]))
    assert got.tolist() == [True, False]  # logit 3 -> class 0; all removed: logit -3 -> class 1


# ----------------------------------------------------------------------------- sensitivity


def test_sensitivity_by_hand():
    e = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).expand(2, 1, 2, 2)
    e_adv = torch.tensor([[1.0, 3.0], [2.0, 4.0]]).expand(2, 1, 2, 2)
    x = torch.zeros(2, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, 1, 0, 0] = 0.1
    x_adv[0, 2, 1, 1] = -0.2
    s = M.sensitivity(e, e_adv, x, x_adv, fraction=0.5)
    # top-2 pixels {0, 1} and {1, 3}: two pixels differ; ||x - x'|| = sqrt(0.05)
    torch.testing.assert_close(s[0], torch.tensor(math.sqrt(2) / math.sqrt(0.05)))
    assert s[1].isnan()  # x' = x


def test_sensitivity_agrees_with_captum(model, small):
    """Captum's sensitivity_max with one deterministic perturbation is ||E(x') - E(x)|| / ||E(x)||;
    for the binary top-K map ||E(x)|| = sqrt(K), so S_S * ||x - x'|| / sqrt(K) must equal it."""
    from captum.metrics import sensitivity_max

    x, target, e = small
    sign = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).sign()

    def perturb(inputs):
        return (inputs + 0.03 * sign.repeat(len(inputs) // len(x), 1, 1, 1)).clamp(0, 1)

    def explain(inputs, target):  # a tuple for a tuple, as Captum's attribution methods
        if isinstance(inputs, tuple):
            return (explain(inputs[0], target),)
        return M.top_fraction(grad(model, inputs, target), 0.2)

    captum = sensitivity_max(explain, x, perturb, n_perturb_samples=1, target=target)
    x_adv = perturb(x)
    ours = M.sensitivity(e, grad(model, x_adv, target), x, x_adv, fraction=0.2)
    k = round(0.2 * 32 * 32)
    scaled = ours * (x - x_adv).flatten(1).norm(dim=1) / math.sqrt(k)
    torch.testing.assert_close(scaled, captum.flatten(), rtol=1e-5, atol=1e-6)
    assert (captum > 0).any()


# ----------------------------------------------------------------------------- rank similarity


@pytest.mark.parametrize("levels", [3, 1000, None])
def test_spearman_matches_scipy(levels):
    g = torch.Generator().manual_seed(levels or 0)
    shape = (6, 1, 5, 7)
    if levels is None:
        a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    else:  # integers with many ties
        a = torch.randint(levels, shape, generator=g).float()
        b = (a + torch.randint(3, shape, generator=g)).float()
    rho = M.spearman(a, b)
    for i in range(len(a)):
        ref = sps.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert abs(rho[i].item() - ref) < 1e-6


def test_spearman_nan_for_a_constant_map():
    a = torch.ones(2, 1, 3, 3)
    b = torch.rand(2, 1, 3, 3)
    assert M.spearman(a, b).isnan().all()
    with pytest.raises(SalauditError, match="differ"):
        M.spearman(a, torch.rand(2, 1, 3, 4))


def test_topk_intersection_by_hand():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]]).view(1, 1, 1, 5)
    b = torch.tensor([[1.0, -9.0, 2.0, 8.0, 0.0]]).view(1, 1, 1, 5)  # |b|: pixels 1, 3, 2, ...
    # k = round(0.4 * 5) = 2: {0, 1} and {1, 3} share one pixel
    torch.testing.assert_close(M.topk_intersection(a, b, 0.4), torch.tensor([0.5]))
    torch.testing.assert_close(M.topk_intersection(a, b, 0.6), torch.tensor([2 / 3]))
    torch.testing.assert_close(M.topk_intersection(a, a, 0.02), torch.tensor([1.0]))


# ----------------------------------------------------------------------------- localisation

LOC_MAP = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, -1.0, 0.0], [0.0, 3.0, -1.0, 0.0], [0.0, 0.0, 0.0, -2.0]]
)


def test_localisation_by_hand():
    e = torch.stack([LOC_MAP / 2, LOC_MAP / 2, torch.zeros(4, 4)])[None]  # channels sum to it
    e = torch.cat([e, torch.zeros_like(e)])  # second sample: an all-zero map
    box = torch.tensor([[1, 1, 3, 3], [1, 1, 3, 3]])  # rows 1-2, columns 1-2
    out = M.localisation(e, box)
    # P = {(0,0), (1,1), (2,1)}: 2 in the box of 4 pixels, 1 outside
    torch.testing.assert_close(out["loc"], torch.tensor([2 / 5, 0.0]))
    assert out["energy_game"][0].item() == pytest.approx(5 / 6)
    assert out["positive_percentage"][0].item() == pytest.approx(5 / 7)
    # |a| sums to 10; centre of mass (1.7, 1.5)
    d1, d2 = math.sqrt(0.7**2 + 0.5**2), math.sqrt(0.3**2 + 0.5**2)
    con = (0.2 + 0.1) / (1 + d1) + (0.3 + 0.1) / (1 + d2)
    assert out["concentration"][0].item() == pytest.approx(con, rel=1e-6)
    for key in ("energy_game", "positive_percentage", "concentration"):
        assert out[key][1].isnan()
    with pytest.raises(SalauditError, match="boxes"):
        M.localisation(e, box[:1])


H44 = torch.tensor(
    [[8.0, 4.0, 0.0, 0.0], [4.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.mark.parametrize(
    ("thresholding", "alpha", "box"),
    [
        ("value", 0.25, [0, 0, 2, 2]),  # >= 2
        ("value", 0.6, [0, 0, 1, 1]),  # >= 4.8
        ("energy", 0.25, [0, 0, 1, 1]),  # 8 >= 5 of 20
        ("energy", 0.5, [0, 0, 2, 2]),  # 8 + 4 >= 10; the tied 4 too
        ("energy", 0.9, [0, 0, 2, 2]),  # 8 + 4 + 4 + 2 = 18
        ("energy", 0.95, [0, 0, 4, 4]),  # + 1 (and the tied 1)
        ("mean", 0.25, [0, 0, 4, 4]),  # >= 0.3125
        ("mean", 2.0, [0, 0, 2, 2]),  # >= 2.5
    ],
)
def test_threshold_box_by_hand(thresholding, alpha, box):
    e = torch.stack([H44, -H44 / 2]).view(1, 2, 4, 4) * 2 / 3  # channel-summed |E| = H44
    assert M.threshold_box(e, thresholding, alpha).tolist() == [box]


def test_box_accuracy_by_hand():
    e = H44.expand(3, 1, 4, 4)
    truth = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 4, 4]])
    assert M.box_accuracy(e, truth, "value").tolist() == [True, True, False]
    assert M.box_accuracy(e, truth, "energy").tolist() == [False, False, False]  # IoU 1/4
    # mean: the whole image; IoU 9/16 with the third box
    assert M.box_accuracy(e, truth, "mean").tolist() == [False, False, True]
    assert M.threshold_box(torch.zeros(1, 1, 4, 5)).tolist() == [[0, 0, 4, 5]]
    with pytest.raises(SalauditError, match="thresholding"):
        M.box_accuracy(e, truth, "otsu")


def test_box_convention_matches_the_data(dataset):
    """The data's boxes are half-open: some end at 32 = H (an inclusive end would be <= 31)."""
    box = torch.as_tensor(dataset.load(np.arange(400)).bbox)
    assert (box[:, :2] >= 0).all() and (box[:, 2:] <= 32).all() and (box[:, 2:] > box[:, :2]).all()
    assert (box[:, 2:] == 32).any()
    inside = _box_mask(box, len(box), 32, 32, box.device)
    assert torch.equal(inside.sum((1, 2)), (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))


# ----------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(7, 7), (16, 23), (32, 32), (40, 9)])
@pytest.mark.parametrize("data_range", [1.0, None])
def test_ssim_matches_skimage(shape, data_range):
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(4, *shape, generator=g)
    b = (a + 0.3 * torch.rand(4, *shape, generator=g)).clamp(0, 1)
    b[3] = torch.rand(*shape, generator=g)
    ours = M.ssim(a, b, data_range=data_range)
    for i in range(4):
        ai, bi = a[i].double().numpy(), b[i].double().numpy()
        rng = data_range or max(ai.max(), bi.max()) - min(ai.min(), bi.min())
        ref = structural_similarity(ai, bi, data_range=rng)
        assert abs(ours[i].item() - ref) < 1e-5


def test_ssim_on_real_maps_matches_skimage(model, small):
    x, target, e = small
    e2 = grad(model, (x + 0.05).clamp(0, 1), target)
    u, v = M.sanity_views(e)["unit"], M.sanity_views(e2)["unit"]
    ours = M.ssim(u[:, None], v[:, None], data_range=1.0)
    for i in range(len(x)):
        ref = structural_similarity(u[i].double().numpy(), v[i].double().numpy(), data_range=1.0)
        assert abs(ours[i].item() - ref) < 1e-5
    assert (M.ssim(u, u, 1.0) == 1).all()
    with pytest.raises(SalauditError, match="win_size"):
        M.ssim(torch.rand(1, 5, 5), torch.rand(1, 5, 5))


# ----------------------------------------------------------------------------- Quantus


def test_quantus_agreement():
    """Quantus' relevance mass accuracy on a+ is the energy game; its top-k intersection with a
    mask of exactly k pixels is ours against that mask; its SSIM uses our default data range."""
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(5)
    e = torch.randn(3, 1, 6, 7, generator=g)
    box = torch.tensor([[1, 2, 4, 6]] * 3)  # 3 x 4 = 12 pixels
    seg = _box_mask(box, 3, 6, 7, e.device)[:, None].float().numpy()
    x, y = np.zeros((3, 1, 6, 7), np.float32), np.zeros(3, int)
    common = {"model": None, "x_batch": x, "y_batch": y, "s_batch": seg, "channel_first": True}
    rma = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    ref = rma(a_batch=e.clamp_min(0).numpy(), **common)
    np.testing.assert_allclose(M.localisation(e, box)["energy_game"].numpy(), ref, rtol=1e-5)
    tki = quantus.TopKIntersection(k=12, abs=True, normalise=False, disable_warnings=True)
    ref = tki(a_batch=e.numpy(), **common)
    ours = M.topk_intersection(e, torch.as_tensor(seg), fraction=12 / 42)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)
    a, b = (torch.randn(3, 8, 9, generator=g).double() for _ in range(2))
    ref = quantus.similarity_func.ssim(a.numpy(), b.numpy(), batched=True)
    np.testing.assert_allclose(M.ssim(a, b).numpy(), ref, atol=1e-5)


# ----------------------------------------------------------------------------- per sample


def test_metrics_are_per_sample(model, small):
    x, target, e = small
    e_adv = grad(model, (x + 0.02).clamp(0, 1), target)
    box = torch.tensor([[4, 6, 20, 25]] * len(x))
    mask = M.saliency_mask(e)

    def all_metrics(idx):
        dp = M.deletion_preservation(
            model, x[idx], mask[idx], target[idx], step_fraction=1 / 8, micro_batch=5
        )
        return {
            "fidelity": M.fidelity(model, x[idx], e[idx], target[idx], micro_batch=3),
            "sensitivity": M.sensitivity(e[idx], e_adv[idx], x[idx], (x[idx] + 0.02).clamp(0, 1)),
            "retrieval": M.class_retrieval(model, x[idx], mask[idx], target[idx]).float(),
            "spearman": M.spearman(e[idx], e_adv[idx]),
            "topk": M.topk_intersection(e[idx], e_adv[idx]),
            "ssim": M.ssim(mask[idx], M.saliency_mask(e_adv[idx])),
            "box": M.box_accuracy(e[idx], box[idx], "energy").float(),
            **{k: v for k, v in dp.items() if v.ndim == 1},
            **M.localisation(e[idx], box[idx]),
        }

    full = all_metrics(torch.arange(len(x)))
    perm = torch.tensor([5, 0, 7])
    part = all_metrics(perm)
    for name, values in full.items():
        assert values.shape == (len(x),), name
        torch.testing.assert_close(part[name], values[perm], atol=1e-5, rtol=1e-5, msg=name)
    e10 = e.clone()  # rescaling one sample's map leaves the others' masks alone
    e10[0] *= 10
    torch.testing.assert_close(M.saliency_mask(e10)[1:], mask[1:])


# ----------------------------------------------------------------------------- sanity check


def test_cascading_randomisation(model, small):
    x, target, _ = small
    x, target = x[:4], target[:4]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def explain(m, xx, t):
        return grad(m, xx, t)

    out = M.cascading_randomisation(model, explain, x, target, seed=1)
    assert out["layers"] == ["fc", "bn3", "conv3", "bn2", "conv2", "bn1", "conv1"]
    for key in ("ssim", "spearman", "spearman_abs"):
        assert out[key].shape == (4, 7)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    torch.testing.assert_close(grad(model, x, target), explain(model, x, target))
    # the maps lose their structure as the randomisation reaches the bottom
    assert out["ssim"][:, -1].mean() < 0.5 * out["ssim"][:, 0].mean()
    assert out["spearman_abs"][:, -1].mean() < out["spearman_abs"][:, 0].mean()
    again = M.cascading_randomisation(model, explain, x, target, layers=["fc", "bn3"], seed=1)
    torch.testing.assert_close(again["ssim"], out["ssim"][:, :2])
    other = M.cascading_randomisation(model, explain, x, target, layers=["fc", "bn3"], seed=2)
    assert not torch.equal(other["ssim"], again["ssim"])
    with pytest.raises(SalauditError, match="not in the model"):
        M.cascading_randomisation(model, explain, x, target, layers=["nope"])


def test_decoy_validity(model, small):
    x, _, _ = small
    population = torch.stack([x, (x + 0.1).clamp(0, 1)], 1)
    v = M.decoy_validity(model, "pool1", x, population)
    assert v.shape == (len(x), 2)
    assert (v[:, 0] == 0).all() and (v[:, 1] > 0).all()
    with pytest.raises(SalauditError, match="decoys"):
        M.decoy_validity(model, "pool1", x, population[:, 0])


# ----------------------------------------------------------------------------- statistics


def test_paired_test_matches_scipy_and_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(0.3, 1.0, size=30)
    a[3], b[7] = np.nan, np.nan
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    for higher in (True, False):
        res = paired_test(a, b, higher_is_better=higher)
        alternative = "greater" if higher else "less"
        ref = sps.ttest_rel(a[keep], b[keep], alternative=alternative).pvalue
        assert res["n"] == 28
        assert res["p_value"] == pytest.approx(ref, rel=1e-12)
        assert res["mean_difference"] == pytest.approx(d.sum() / 28)
        se = math.sqrt(((d - d.mean()) ** 2).sum() / 27 / 28)
        assert res["standard_error"] == pytest.approx(se)
    # a lower than b: significant when lower is better only
    assert paired_test(a, b, False)["p_value"] < 0.05 < paired_test(a, b, True)["p_value"]
    tiny = paired_test([1.0, np.nan], [0.0, 1.0], True)
    assert tiny["n"] == 1 and math.isnan(tiny["p_value"]) and math.isnan(tiny["standard_error"])
    assert math.isnan(paired_test([1.0, 2.0], [1.0, 2.0], True)["p_value"])
    with pytest.raises(SalauditError):
        paired_test([1.0], [1.0, 2.0], True)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # m = 4: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.06, 0.04*1) = 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).shape == (0,)


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).uniform(0, 0.1, size=12)
    np.testing.assert_allclose(holm(p), multitest.multipletests(p, method="holm")[1])


def test_reference_methods():
    available = ["grad", "ig", "smoothgrad", "dance-grad", "dance-mean-ig", "blur-ig", "big"]
    available += ["agi", "bsm", "relex", "noise-smoothgrad", "constant-gradcam"]
    assert reference_methods("dance-grad", available) == ["grad"]
    assert reference_methods("dance-mean-ig", available) == ["ig"]
    assert reference_methods("noise-smoothgrad", available) == ["smoothgrad"]
    assert reference_methods("constant-gradcam", available) == []  # gradcam not run
    assert reference_methods("big", available) == ["ig"]
    assert reference_methods("agi", available) == ["ig"]
    assert reference_methods("bsm", available) == ["grad"]
    assert reference_methods("relex", available) == ["grad", "ig", "smoothgrad"]
    assert reference_methods("relex", ["relex", "ig"]) == ["ig"]
    assert reference_methods("grad", available) == []
    assert ("dance-grad", "grad") in method_pairs(available)
    assert len(method_pairs(available)) == 10
    assert higher_is_better("fidelity") is False and higher_is_better("r_score") is True
    assert higher_is_better("sanity_ssim") is False and higher_is_better("spearman") is True
