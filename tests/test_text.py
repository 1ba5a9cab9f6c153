"""Text through salaudit: the builtin sentiment sentences and text CNN, P = 1 decoys over
whole tokens, the methods against Captum and completeness, the store's dims with words and
padding, the report's shaded sentences, and bad text refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from browser import require_chromium, visit
from captum.attr import Saliency

import salaudit.flows.audit  # noqa: F401  (Prefect's log handler binds at first import)
from salaudit.engine.batching import predictions
from salaudit.flows.cli import main
from salaudit.inputs.data import load_dataset
from salaudit.inputs.models import load_model
from salaudit.inputs.text import NEGATIONS, lexicon, sentences
from salaudit.methods.decoys import make_decoys, masks_for
from salaudit.methods.registry import get_method
from salaudit.pipeline.spec import TEXT_SPEC, parse_spec
from salaudit.report.html import write_report

TEXT = ["--model", "builtin:sentiment-cnn", "--data", "builtin:sentiment"]


@pytest.fixture(scope="module")
def cnn():
    return load_model("builtin:sentiment-cnn")


@pytest.fixture(scope="module")
def rows(cnn):
    batch = load_dataset("builtin:sentiment").load(np.arange(12))
    return batch.image, predictions(cnn, batch.image, 64), batch


def test_sentences_are_labelled_by_lexicon_valence_with_negation_and_split_disjoint():
    s = sentences()
    train = {tuple(r) for r in s["ids_train"]}
    assert not train & {tuple(r) for r in s["ids_test"]}
    ds = load_dataset("builtin:sentiment")
    words, real = ds.tokens(np.arange(200))
    lex = lexicon()
    for row, ok, label in zip(words, real, ds.labels()[:200], strict=True):
        tokens = list(row[ok])
        total = sum(
            -lex[w] if i and tokens[i - 1] in NEGATIONS else lex[w]
            for i, w in enumerate(tokens)
            if w in lex
        )
        assert total != 0 and label == int(total > 0), (tokens, label)
    assert ds.image_shape == (16, 100) and len(lex) == 712


def test_the_text_cnn_reaches_85_percent_on_the_test_sentences(cnn):
    test = load_dataset("builtin:sentiment")
    batch = test.load(np.arange(len(test)))
    accuracy = (predictions(cnn, batch.image, 512) == batch.label).float().mean()
    assert cnn.kind == "text" and accuracy >= 0.85, accuracy


def test_decoys_differ_from_x_only_inside_their_masks_by_whole_tokens(cnn, rows):
    x, _, _ = rows
    method = get_method("dance-grad", decoys={"decoys": 32}).resolved(cnn)
    found = make_decoys(cnn, x, method.decoys)
    inside = masks_for(cnn, method.decoys).masks[:, 0, :][found.mask_index]  # (K, T)
    changed = found.population != x[:, None]  # (B, K, T, D)
    assert found.population.shape == (len(x), 32, 16, 100)
    assert not (changed & ~inside[None, :, :, None]).any()
    assert inside.sum(1).max() == 1  # one token a mask at the spec's budget
    assert changed.any(-1).float().mean() > 0  # and something inside moves
    assert found.success.float().mean() >= 0.9
    constant = get_method("constant-grad", decoys={"decoys": 16}).resolved(cnn)
    filled = make_decoys(cnn, x, constant.decoys)
    inside = masks_for(cnn, constant.decoys).masks[:, 0, :][filled.mask_index]
    mean = cnn.baseline_colour.view(1, 1, 1, 100).expand_as(filled.population)
    assert torch.equal(filled.population[:, inside], mean[:, inside])  # the mean embedding


def test_range_aggregation_is_max_minus_min_over_the_population(cnn, rows):
    x, t, _ = rows
    method = get_method("dance-grad", decoys={"decoys": 8}).resolved(cnn)
    population = make_decoys(cnn, x, method.decoys).population
    members = torch.cat([x[:, None], population], 1).flatten(0, 1)
    grads = get_method("grad")(cnn, members, t.repeat_interleave(9)).view(len(x), 9, 16, 100)
    expected = grads.amax(1) - grads.amin(1)
    assert torch.allclose(method(cnn, x, t), expected, rtol=1e-5, atol=1e-7)


def test_ig_completeness_within_one_percent_on_the_text_cnn(cnn, rows):
    x, t, _ = rows
    attribution = get_method("ig", {"n_steps": 32})(cnn, x, t)
    with torch.no_grad():
        gap = (cnn(x) - cnn(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    total = attribution.flatten(1).sum(1)
    assert ((total - gap).abs() <= 0.01 * gap.abs()).all(), (total - gap).abs() / gap.abs()


def test_grad_matches_captums_saliency_on_the_text_cnn(cnn, rows):
    x, t, _ = rows
    theirs = Saliency(cnn).attribute(x.clone(), target=t, abs=False)
    assert torch.allclose(get_method("grad")(cnn, x, t), theirs, rtol=1e-6, atol=1e-8)


def test_the_text_spec_parses_to_one_token_per_mask(cnn):
    import yaml

    spec = parse_spec(yaml.safe_load(TEXT_SPEC))
    dance = spec.method("dance-grad").resolved(cnn).decoys
    assert (dance.patch, dance.per_mask, dance.n_masks) == (1, 1, 16)


def test_a_text_audit_stores_tokens_and_a_report_shades_its_words(tmp_path, rows):
    store = tmp_path / "t"
    argv = ["explain", *TEXT, "--methods", "grad,dance-grad", "--decoy", "dance.decoys=8"]
    argv += ["--limit", "4", "--shard-size", "2", "--store", str(store), "--quiet"]
    assert main(argv) == 0
    assert main(["evaluate", "--store", str(store), "--metrics", "fidelity", "--quiet"]) == 0
    inputs = xr.open_zarr(store, group="inputs", chunks=None)
    maps = xr.open_zarr(store, group="maps", chunks=None)
    assert inputs["image"].dims == maps["grad"].dims == ("sample", "token", "embedding")
    assert inputs["word"].dims == inputs["padding"].dims == ("sample", "token")
    ds = load_dataset("builtin:sentiment")
    words, real = ds.tokens(inputs["sample"].values)
    assert (inputs["word"].values == words).all() and (inputs["padding"].values == real).all()
    out = tmp_path / "report"
    write_report(str(store), str(out))
    page_html = (out / "index.html").read_text()
    first = [w for w, ok in zip(words[0], real[0], strict=True) if ok]
    assert all(f">{w}</span>" in page_html for w in first)
    require_chromium()
    page = visit((out / "index.html").as_uri())
    assert page.problems == [] and "mean of its map over the embedding dims" in page.text


def test_zarr_embeddings_without_a_padding_mask_are_refused(tmp_path, capsys):
    from test_bad_input import refused

    data = tmp_path / "text.zarr"
    group = zarr.open_group(str(data), mode="w")
    group.create_array("image", data=np.full((4, 16, 100), 0.5, dtype=np.float32))
    group.create_array("label", data=np.array([0, 1, 0, 1]))
    store = tmp_path / "s"
    argv = ["explain", "--model", "builtin:sentiment-cnn", "--data", f"zarr:{data}"]
    refused(capsys, [*argv, "--methods", "grad", "--store", str(store), "--quiet"], "no padding")
    assert not store.exists()


def test_zarr_token_ids_without_a_padding_mask_are_refused(tmp_path):
    from salaudit.errors import SalauditError

    data = tmp_path / "ids.zarr"
    group = zarr.open_group(str(data), mode="w")
    group.create_array("token", data=np.array([[1, 2, 0], [3, 0, 0]]))
    group.create_array("embedding", data=np.full((4, 100), 0.5, dtype=np.float32))
    group.create_array("label", data=np.array([0, 1]))
    with pytest.raises(SalauditError, match="no padding mask.*add padding"):
        load_dataset(f"zarr:{data}")


@pytest.mark.slow
def test_the_text_spec_audits_through_the_flow(tmp_path):
    import yaml

    spec = yaml.safe_load(TEXT_SPEC)
    spec["selection"]["n"] = 8
    spec["store"] = {"url": str(tmp_path / "audit")}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["audit", str(path), "--quiet"]) == 0
    maps = xr.open_zarr(tmp_path / "audit", group="maps", chunks=None)
    assert maps["dance-ig"].dims == ("sample", "token", "embedding")
    assert (tmp_path / "audit-report" / "index.html").exists()


def test_zarr_token_ids_over_an_embedding_table_are_a_text(tmp_path):
    data = tmp_path / "ids.zarr"
    group = zarr.open_group(str(data), mode="w")
    table = np.random.default_rng(0).random((6, 100), dtype=np.float32)
    ids = np.array([[1, 2, 3] + [0] * 13, [4, 5] + [0] * 14])
    group.create_array("token", data=ids)
    group.create_array("embedding", data=table)
    group.create_array("padding", data=ids > 0)
    group.create_array("label", data=np.array([0, 1]))
    group.attrs["vocabulary"] = ["<pad>", "a", "b", "c", "d", "e"]
    ds = load_dataset(f"zarr:{data}")
    batch = ds.load([1])
    assert ds.image_shape == (16, 100) and torch.equal(
        batch.image[0, 0], torch.from_numpy(table[4])
    )
    assert list(batch.words[0, :3]) == ["d", "e", ""] and batch.padding[0].sum() == 2
