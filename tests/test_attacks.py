"""Attacks: the differentiable maps, each attack's success rule checked independently of the
attack code, the attack and evaluate stages on a store, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_cli import explain_16, fast, salaudit

from salaudit.attacks.catalogue import attacks, parse_attack
from salaudit.errors import SalauditError
from salaudit.flows.cli import main
from salaudit.inputs.models import PixelModel
from salaudit.methods import gradients as saliency
from salaudit.methods.differentiable import (
    DifferentiableMap,
    differentiable_methods,
    softplus_copy,
)
from salaudit.methods.gradients import Context, gauss_legendre
from support import tiny_conv

BUDGET = 8 / 255


def _ctx(idx, name: str) -> Context:
    return Context([f"0/{int(i)}/{name}" for i in idx])


def _map_with_graph(model, x, target, name: str, n_steps: int):
    """The method's map built with create_graph in one piece (the reference for the
    Hessian-vector route)."""
    if name == "ig":
        alphas, weights = (t.float() for t in gauss_legendre(n_steps))
        total = 0
        for a, w in zip(alphas, weights, strict=True):
            point = a * x
            (g,) = torch.autograd.grad(
                model(point).gather(1, target[:, None]).sum(), point, create_graph=True
            )
            total = total + w * g
        return x * total
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x, create_graph=True)
    return g * x if name == "gradxinput" else g


@pytest.mark.parametrize("name", differentiable_methods())
def test_differentiable_maps_equal_the_methods_and_their_gradients_autograd(name, model, batch64):
    x, target, idx = (v[:6] for v in batch64)
    params = {"ig": {"n_steps": 8}, "smoothgrad": {"n_samples": 4}}.get(name, {})
    ctx = _ctx(idx, name)
    maps = DifferentiableMap.build(name, model, target, ctx, params)
    reference = getattr(saliency, name)(model, x, target, ctx, **params)
    torch.testing.assert_close(maps.map(x), reference, rtol=1e-5, atol=1e-7)
    if name == "smoothgrad":
        return  # its noise scale depends on x's range, held constant in the gradient
    v = torch.randn_like(x)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(
        (_map_with_graph(model, leaf, target, name, 8) * v).sum(), leaf
    )
    got = maps.input_gradient(x, v)
    assert (got - expected).norm() / expected.norm() < 1e-4


def test_softplus_copy_replaces_relu_and_leaves_the_model_alone():
    net = tiny_conv()
    model = PixelModel(net, input_shape=(3, 32, 32), num_classes=4)
    soft, replaced = softplus_copy(model, 30.0)
    assert replaced and soft is not model
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in soft.modules())
    x = torch.rand(3, 3, 32, 32)
    target = model(x).argmax(1)
    maps = DifferentiableMap.build("grad", model, target, Context(), beta=30.0)
    # the map is the ReLU model's own; the direction is the softplus copy's Hessian times v
    torch.testing.assert_close(maps.map(x), saliency.grad(model, x, target))
    v = torch.randn_like(x)
    leaf = x.clone().requires_grad_(True)
    expected = _map_with_graph(maps.soft, leaf, target, "grad", 1)
    (expected,) = torch.autograd.grad((expected * v).sum(), leaf)
    got = maps.input_gradient(x, v)
    assert expected.abs().sum() > 0 and (got - expected).norm() / expected.norm() < 1e-4
    # through the ReLU model itself the same product vanishes: the copy is what gives a direction
    plain = _map_with_graph(model, leaf, target, "grad", 1)
    (flat,) = torch.autograd.grad((plain * v).sum(), leaf, allow_unused=True)
    assert flat is None or flat.abs().max() < 1e-6


def _objective(name: str, e0: torch.Tensor, e1: torch.Tensor) -> np.ndarray:
    """The attacked quantity recomputed here with numpy, not with the attack's code."""
    h0, h1 = (e.abs().sum(1).numpy() for e in (e0, e1))
    h0, h1 = (h / h.sum(axis=(1, 2), keepdims=True) for h in (h0, h1))
    n, hh, ww = h0.shape
    if name == "topk":
        k = round(0.02 * hh * ww)
        top = np.argsort(-h0.reshape(n, -1), axis=1)[:, :k]
        return -np.take_along_axis(h1.reshape(n, -1) - h0.reshape(n, -1), top, 1).sum(1)
    if name == "target":
        s = round(hh / 8)
        return h1[:, -s:, -s:].sum((1, 2)) - h0[:, -s:, -s:].sum((1, 2))
    ys, xs = np.mgrid[:hh, :ww]
    c0 = np.stack([(h0 * ys).sum((1, 2)), (h0 * xs).sum((1, 2))], 1)
    c1 = np.stack([(h1 * ys).sum((1, 2)), (h1 * xs).sum((1, 2))], 1)
    return np.linalg.norm(c1 - c0, axis=1)


def _check_ghorbani(name: str, model, x, target, idx, steps: int) -> float:
    result = attacks()[name].fn(model, x, target, "grad", _ctx(idx, "grad"), steps=steps)
    adv = result.image
    assert (adv - x).abs().max() <= BUDGET + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) == target).all()  # the label is kept, always
    e0, e1 = saliency.grad(model, x, target), saliency.grad(model, adv, target)
    moved = _objective(name, e0, e1) > 1e-6
    np.testing.assert_array_equal(moved, result.success.numpy())
    return moved.mean()


@pytest.mark.parametrize("name", ["topk", "target", "mass-center"])
def test_ghorbani_attacks_move_their_objective_and_keep_the_label(name, model, batch64):
    x, target, idx = (v[:16] for v in batch64)
    assert _check_ghorbani(name, model, x, target, idx, steps=30) >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["topk", "target", "mass-center"])
def test_ghorbani_acceptance_64_images_default_steps(name, model, batch64):
    x, target, idx = batch64
    assert _check_ghorbani(name, model, x, target, idx, steps=300) >= 0.8


def test_pgd_success_rises_with_the_radius(model, batch64):
    x, target, idx = batch64
    radii = (1, 2, 4, 8, 16, 32)
    result = attacks()["pgd"].fn(model, x, target, None, _ctx(idx, "pgd"), radii=radii)
    assert result.image.shape == (64, 6, 3, 32, 32)
    eps = torch.tensor(radii).float().view(1, -1, 1, 1, 1) / 255
    assert ((result.image - x[:, None]).abs() <= eps + 1e-6).all()
    with torch.no_grad():
        changed = model(result.image.flatten(0, 1)).argmax(1).view(64, 6) != target[:, None]
    assert torch.equal(changed, result.success)
    share = changed.float().mean(0)
    assert (share[1:] >= share[:-1]).all() and share[-1] > share[0]
    assert (result.objective_after >= result.objective_before).all()


def test_manipulate_moves_the_map_towards_the_target_map(model, batch64):
    x, target, idx = (v[:8] for v in batch64)
    x_target = batch64[0][8:16]
    result = attacks()["manipulate"].fn(
        model, x, target, "grad", _ctx(idx, "grad"), x_target=x_target, steps=60
    )
    with torch.no_grad():
        assert (model(result.image).argmax(1) == target).all()
    goal = saliency.grad(model, x_target, model(x_target).argmax(1)).abs().sum(1)
    goal = goal / goal.sum((1, 2), keepdim=True)

    def mse(img):
        h = saliency.grad(model, img, target).abs().sum(1)
        return ((h / h.sum((1, 2), keepdim=True) - goal) ** 2).mean((1, 2))

    closer = mse(result.image) < mse(x)
    assert torch.equal(closer, result.success) and closer.float().mean() >= 0.8


def test_attack_names_and_methods_without_a_gradient():
    assert parse_attack("topk@grad") == ("topk", "grad")
    assert parse_attack("pgd") == ("pgd", None)
    with pytest.raises(SalauditError, match="grad, gradxinput, ig, smoothgrad"):
        parse_attack("topk@dance-grad")
    with pytest.raises(SalauditError, match="topk@METHOD"):
        parse_attack("topk")
    with pytest.raises(SalauditError, match="valid: topk, target, mass-center, manipulate, pgd"):
        parse_attack("blur@grad")


ATTACKS4 = "topk@grad,mass-center@grad,target@grad,pgd"


def _arrays(store: str) -> dict[str, np.ndarray]:
    tree = xr.open_datatree(store, engine="zarr", chunks=None)
    return {
        f"{node.path}/{k}": v.values for node in tree.subtree for k, v in node.ds.data_vars.items()
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )


def test_attack_and_evaluate_stages_write_groups_xarray_reads_and_rerun_changes_nothing(
    tmp_path, capsys
):
    store = str(tmp_path / "s")
    explain = ["explain", "--methods", "grad,ig", "--limit", "4", "--store", store, "--quiet"]
    assert main([*explain, "--shard-size", "2", "--param", "ig.n_steps=8"]) == 0
    attack = ["attack", "--store", store, "--quiet", "--radii", "2,32", "--attacks", ATTACKS4]
    attack += [f"--param={a}.steps=5" for a in ("topk", "target", "mass-center")]
    assert main(attack) == 0
    assert main(["evaluate", "--store", store, "--quiet"]) == 0
    first = _arrays(store)
    skipped = [line for line in capsys.readouterr().out.splitlines() if "not applicable" in line]
    assert [line.split(":")[1].strip() for line in skipped] == ["decoy_validity"]  # no decoys kept
    assert main(attack) == 0 and main(["evaluate", "--store", store, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 parts computed" in out and "0 metric parts computed" in out
    assert _same(first, _arrays(store))

    tree = xr.open_datatree(store, engine="zarr", chunks=None)
    assert set(tree["attacks"].children) == {"topk@grad", "mass-center@grad", "target@grad", "pgd"}
    pgd = tree["attacks/pgd"].ds
    assert pgd["image"].dims == ("sample", "radius", "channel", "y", "x")
    assert list(pgd["radius"].values) == [2.0, 32.0]
    assert set(tree["attacks/topk@grad/maps"].ds.data_vars) == {"grad", "ig"}
    clean = tree["inputs"].ds["image"].values
    for name in ("topk@grad", "target@grad", "mass-center@grad"):
        delta = tree[f"attacks/{name}"].ds["image"].values - clean
        assert np.abs(delta).max() <= BUDGET + 1e-6
    m = tree["metrics"].ds
    assert list(m["method"].values) == ["grad", "ig"]
    assert m["sensitivity"].dims == ("sample", "method", "attack")
    assert m["retrieval_adv"].dims == ("sample", "method", "radius")
    assert m["box_accuracy"].sizes["threshold"] == 3
    for name in ("loc", "energy_game", "positive_percentage", "concentration"):
        assert np.isfinite(m[name].values).any(), name
    assert not np.isnan(m["fidelity"].values).any()
    stats = tree["stats"].ds
    assert stats.sizes["comparison"] == 0  # grad and ig are not a pair of METHODS.md

    # a later explain adds a method; evaluate extends the tables without touching the rest
    assert main([*explain, "--methods", "dance-grad", "--keep-decoys", *fast("dance-grad")]) == 0
    metrics = "fidelity,decoy_validity"
    assert main(["evaluate", "--store", store, "--quiet", "--metrics", metrics]) == 0
    tree = xr.open_datatree(store, engine="zarr", chunks=None)
    m = tree["metrics"].ds
    validity = m["decoy_validity_dance"].values  # recomputed from the stored population
    assert (validity[:, 0] == 0).all() and (validity[:, 1:] > 0).all()
    stored = tree["decoys/dance"].ds["representation_difference"].values
    np.testing.assert_allclose(validity, stored, rtol=1e-4, atol=1e-6)
    assert list(m["method"].values) == ["grad", "ig", "dance-grad"]
    np.testing.assert_array_equal(m["fidelity"].values[:, :2], first["/metrics/fidelity"])
    assert not np.isnan(m["fidelity"].values[:, 2]).any()
    stats = xr.open_datatree(store, engine="zarr", chunks=None)["stats"].ds
    rows = {
        (str(a), str(b))
        for a, b in zip(stats["method"].values, stats["reference"].values, strict=True)
    }
    assert rows == {("dance-grad", "grad")}
    assert list(stats["metric"].values) == ["fidelity"]  # the only metric both have
    assert (stats["p_holm"].values >= stats["p_value"].values).all()


def test_stage_errors_name_what_to_run(tmp_path, capsys):
    store = str(tmp_path / "s")
    assert main(["explain", "--methods", "grad", "--limit", "2", "--store", store, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", store, "--metrics", "sensitivity", "--quiet"]) == 2
    assert "salaudit attack --store" in capsys.readouterr().err
    assert main(["attack", "--store", store, "--attacks", "topk@relex", "--quiet"]) == 2
    assert "grad, gradxinput, ig, smoothgrad" in capsys.readouterr().err
    assert main(["attack", "--store", str(tmp_path / "none"), "--quiet"]) == 2
    assert "salaudit explain" in capsys.readouterr().err
    assert main(["evaluate", "--store", store, "--metrics", "fidelity,bogus", "--quiet"]) == 2
    assert "valid: fidelity" in capsys.readouterr().err
    # without attacks the default list skips what needs them, and says so
    assert main(["evaluate", "--store", store, "--quiet"]) == 0
    assert "sensitivity: not applicable (needs salaudit attack" in capsys.readouterr().out


def test_metrics_that_need_boxes_on_data_without_boxes(tmp_path, capsys, batch64):
    import zarr

    data = zarr.open_group(str(tmp_path / "data"), mode="w", zarr_format=3)
    data.create_array("image", data=batch64[0][:4].numpy())
    data.create_array("label", data=batch64[1][:4].numpy())
    store = str(tmp_path / "s")
    explain = ["explain", "--data", f"zarr:{tmp_path / 'data'}", "--methods", "grad"]
    assert main([*explain, "--limit", "2", "--store", store, "--quiet"]) == 0
    assert main(["evaluate", "--store", store, "--metrics", "localisation", "--quiet"]) == 2
    assert "bounding boxes" in capsys.readouterr().err
    assert main(["evaluate", "--store", store, "--quiet"]) == 0
    assert "localisation: not applicable" in capsys.readouterr().out


@pytest.mark.slow
def test_acceptance_attack_and_evaluate_on_the_example_store(tmp_path):
    """The foundation example's store (its default methods, 16 images), attacked with the
    issue's command and evaluated; both re-run without changing anything."""
    store = str(tmp_path / "example")
    methods = "grad,ig,smoothgrad,dance-grad,blur-grad"
    out = explain_16(methods, store, *fast(methods))
    assert out.returncode == 0, out.stderr
    steps = [f"--param={a}.steps=100" for a in ("topk", "target", "mass-center")]
    attack = ["attack", "--store", store, "--quiet", *steps, "--attacks"]
    attack.append("topk@grad,mass-center@grad,target@grad,pgd")
    out = salaudit(*attack)
    assert out.returncode == 0, out.stderr
    assert "pgd success by radius" in out.stdout
    out = salaudit("evaluate", "--store", store, "--quiet")
    assert out.returncode == 0, out.stderr
    before = _arrays(store)
    assert salaudit(*attack).returncode == 0
    assert salaudit("evaluate", "--store", store, "--quiet").returncode == 0
    assert _same(before, _arrays(store))
    tree = xr.open_datatree(store, engine="zarr")
    stats = tree["stats"].ds
    pairs = {
        (str(a), str(b))
        for a, b in zip(stats["method"].values, stats["reference"].values, strict=True)
    }
    assert pairs == {("dance-grad", "grad"), ("blur-grad", "grad")}
    success = tree["attacks/pgd"].ds["success"].values.mean(0)
    assert success[-1] > success[0]
