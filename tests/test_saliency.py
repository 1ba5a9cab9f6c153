"""Base saliency methods against Captum and against their defining properties."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

from salaudit.engine.keys import keyed_normal
from salaudit.methods.gradients import Context, gradcam, noisy_gradient_stats, smoothgrad
from salaudit.methods.registry import external_method, get_method, registry


def close(a, b, rel=1e-4):
    """Equal within `rel` of the larger magnitude (the layouts' float tolerance)."""
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp_min(1e-12)
    return (a - b).abs().max().item() <= rel * scale.item()


@pytest.fixture(scope="module")
def batch8(batch64):
    x, target, idx = batch64
    return x[:8], target[:8], idx[:8]


def test_grad_equals_captum_saliency_signed(model, batch8):
    x, t, _ = batch8
    ours = get_method("grad")(model, x, t)
    theirs = Saliency(model).attribute(x, target=t, abs=False)
    assert close(ours, theirs, 1e-6) and (ours < 0).any()


def test_ig_matches_captum_gauss_legendre(model, batch8):
    x, t, _ = batch8
    ours = get_method("ig")(model, x, t)
    theirs = IntegratedGradients(model).attribute(x, target=t, n_steps=50, method="gausslegendre")
    assert close(ours, theirs, 1e-4)


def test_ig_completeness_within_one_percent(model, batch64):
    x, t, _ = batch64
    attribution = get_method("ig")(model, x, t)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None]).squeeze(1) - model(torch.zeros_like(x)).gather(
            1, t[:, None]
        ).squeeze(1)
    total = attribution.flatten(1).sum(1)
    assert ((total - gap).abs() <= 0.01 * gap.abs()).all(), (total - gap).abs() / gap.abs()


def test_smoothgrad_equals_captum_saliency_loop_on_the_same_noise(model, batch8):
    x, t, _ = batch8
    keys = [f"0/{i}/smoothgrad" for i in range(len(x))]
    ours = smoothgrad(model, x, t, Context(keys), n_samples=5)
    sigma = 0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    saliency = Saliency(model)
    for i in range(len(x)):
        noise = keyed_normal(
            [f"{keys[i]}/smoothgrad-noise/{k}" for k in range(5)], (3, 32, 32), "cpu"
        )
        grads = [
            saliency.attribute(
                x[i : i + 1] + sigma[i] * noise[k : k + 1], target=int(t[i]), abs=False
            )
            for k in range(5)
        ]
        assert close(ours[i], torch.cat(grads).mean(0), 1e-5)


def test_vargrad_and_sgrange_describe_the_same_gradients(model, batch8):
    x, t, _ = batch8
    ctx = Context([str(i) for i in range(len(x))])
    stats = noisy_gradient_stats(model, x, t, ctx, 6, 0.15)
    var = get_method("vargrad", {"n_samples": 6})(model, x, t, ctx)
    rng = get_method("sgrange", {"n_samples": 6})(model, x, t, ctx)
    assert torch.allclose(var, stats["var"]) and torch.allclose(rng, stats["range"])
    assert (stats["range"] ** 2 / 4 >= stats["var"] - 1e-9).all()  # range bounds the variance


def test_gradcam_matches_captum_upsampled(model, batch8):
    x, t, _ = batch8
    ours = gradcam(model, x, t, layer="act3")
    cam = LayerGradCam(model, model.layer("act3")).attribute(x, target=t, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
    assert close(ours[:, :1], theirs, 1e-5) and torch.equal(ours[:, 0], ours[:, 2])


def test_expgrad_and_intuniform_are_keyed_by_sample(model, batch8, dataset):
    x, t, _ = batch8
    refs = dataset.references(16, seed=0)
    ctx = Context([f"0/{i}" for i in range(8)], references=refs)
    for name in ("expgrad", "intuniform"):
        a = get_method(name)(model, x, t, ctx)
        b = get_method(name)(model, x, t, ctx)
        c = get_method(name)(model, x, t, Context([f"1/{i}" for i in range(8)], references=refs))
        assert torch.equal(a, b) and not torch.equal(a, c) and a.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n, i in registry().items() if i.decoys])
def test_results_do_not_depend_on_batching(model, batch8, dataset, name):
    """One image at a time, one batch, two shards, other micro-batches: same maps."""
    x, t, idx = batch8
    refs = dataset.references(16, seed=0)
    keys = [f"0/{int(i)}/{name}" for i in idx]
    method = get_method(
        name, {"n_samples": 4} if name in {"smoothgrad", "vargrad", "sgrange", "expgrad"} else None
    )
    whole = method(model, x, t, Context(keys, micro_batch=64, references=refs))
    singles = torch.cat(
        [
            method(model, x[i : i + 1], t[i : i + 1], Context(keys[i : i + 1], 7, refs))
            for i in range(len(x))
        ]
    )
    shards = torch.cat(
        [
            method(model, x[s : s + 4], t[s : s + 4], Context(keys[s : s + 4], 13, refs))
            for s in (0, 4)
        ]
    )
    assert close(whole, singles) and close(whole, shards)


def test_captum_method_serves_as_a_base(model, batch8):
    x, t, _ = batch8

    def captum_ig(m, inputs, target):
        return IntegratedGradients(m).attribute(inputs, target=target, n_steps=20)

    method = external_method("captum-ig", captum_ig)
    assert close(method(model, x, t), captum_ig(model, x, t), 1e-6)
