"""The audit report: a static HTML page (no script, no network) with PNG figures and CSV
tables beside it, built from a store alone.

Sections: the run, the headline, per metric the methods' means and the paired tests (DANCE
tables A4-A11: difference, standard error, one-sided p-value, Holm), saliency maps (DANCE
figure 2A), the robustness matrix, localisation (BIG table 1), the sanity check and decoy
validity. A section whose data the store lacks says what would produce it. Every statistic is
recomputed here from the per-sample metrics (the `stats` group is not read).
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import SalauditError
from ..inputs.uris import filesystem, is_remote
from ..methods.registry import decoy_generator, method_info, registry, split_name
from ..metrics.catalogue import (
    Section,
    family_of,
    generator_of,
    higher_is_better,
    in_section,
    variables,
)
from ..metrics.stats import summary
from ..pipeline.checks import warnings
from ..pipeline.evaluate import NEXT_STAGE
from ..store import schema
from ..store.store import Store
from ..version import __version__, environment
from . import figures
from .display import (
    MIN_TILE,
    class_name,
    display_map,
    image_rgb,
    map_rgb,
    map_state,
    shown_width,
    tile,
)
from .tables import (
    ALPHA,
    MetricTable,
    Table,
    esc,
    fmt,
    fmt_p,
    headline,
    headline_table,
    metric_tables,
)

SECTIONS = {
    "run": "The run",
    "warnings": "Warnings",
    "headline": "Headline",
    "metrics": "Metrics and paired tests",
    "maps": "Saliency maps",
    Section.ROBUSTNESS: "Robustness to attacks",
    Section.LOCALISATION: "Localisation",
    Section.SANITY: "Sanity check",
    Section.DECOYS: "Decoy validity",
}
GRID_SAMPLES = 4


@dataclass(frozen=True)
class Missing:
    """A section without its data, and what would produce it."""

    why: str


@dataclass
class Report:
    """Where the report went, and what the Prefect artifacts show."""

    location: str
    headline: list[dict[str, Any]]
    tables: list[MetricTable]
    missing: dict[str, str] = field(default_factory=dict)  # section -> why it is empty


# --- the store's contents ------------------------------------------------------------------------


class Contents:
    """What a store holds, for the report: its groups read once each (None where the store
    lacks them), its attributes and audit records."""

    def __init__(self, store: Store):
        self.store = store
        self.attrs = store.attrs()
        self.records = store.audit_records()
        self._groups: dict[str, Any] = {}

    def group(self, path: str):
        if path not in self._groups:
            self._groups[path] = self.store.dataset(path) if self.store.has(path) else None
        return self._groups[path]

    @property
    def methods(self) -> list[str]:
        """The stored maps' methods, in the order the store's config names them."""
        maps = self.group(schema.MAPS)
        if maps is None:
            return []
        stored = [str(v) for v in maps.data_vars]
        named = self.attrs.get("config", {}).get("methods", [])
        return [m for m in named if m in stored] + sorted(set(stored) - set(named))

    def subgroups(self, path: str) -> list[str]:
        return self.store.subgroups(path)


def _table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with esc), headers are text."""
    return Table(header or [], rows, raw=True).html(cls)


def _figure(path: Path, root: Path, alt: str) -> str:
    rel = path.relative_to(root).as_posix()
    return f'<figure><img src="{esc(rel)}" alt="{esc(alt)}"></figure>'


def _missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def _mean_se(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{fmt(r['mean'])} ± {fmt(r['standard_error'])}"


# --- sections ------------------------------------------------------------------------------------


def _metric_baseline(audit: Contents) -> str:
    """What replaced removed pixels in fidelity, deletion and retrieval."""
    metrics = audit.group(schema.METRICS)
    if metrics is None:
        return "none (no metrics)"
    kind = schema.metric_baseline_of(metrics.attrs)
    dims = audit.group(schema.INPUTS)["image"].dims
    mean = (
        "the data's feature means"
        if "feature" in dims
        else "the dictionary's mean embedding"
        if "token" in dims
        else "the data's mean colour"
    )
    return {"mean": f"mean ({mean})", "blur": "blur (the image blurred)"}.get(kind, kind)


def _run_section(audit: Contents) -> str:
    a, inputs = audit.attrs, audit.group(schema.INPUTS)
    n = inputs.sizes["sample"]
    correct = int((inputs["label"] == inputs["prediction"]).sum())
    info = [
        ["store", esc(audit.store.url)],
        ["model", esc(a.get("model", "?"))],
        ["model fingerprint", f"<code>{esc(a.get('model_fingerprint', '?'))}</code>"],
        ["data", esc(a.get("data", "?"))],
        ["data fingerprint", f"<code>{esc(a.get('data_fingerprint', '?'))}</code>"],
        ["selection", esc(json.dumps(a.get("selection", {})))],
        ["samples", f"{n} ({correct} classified correctly)"],
        ["methods", esc(", ".join(audit.methods) or "none")],
        ["attacks", esc(", ".join(audit.subgroups(schema.ATTACKS)) or "none")],
        ["metric baseline", esc(_metric_baseline(audit))],
        ["written by", esc(f"salaudit {a.get('salaudit_version', '?')}")],
    ]
    html_ = _table(None, info, "info")
    if not audit.records:
        html_ += _missing(
            "No audit record: salaudit explain, attack and evaluate keep none; the stage "
            "timings, failures and versions are recorded by salaudit audit."
        )
        return html_ + _versions(environment(), "this report's environment")
    rec = audit.records[-1]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec["started"]))
    run = [
        ["started", when],
        ["wall time", f"{rec['seconds']:.1f} s"],
        [
            "units",
            f"{rec['units']} ({rec['computed_units']} computed, "
            f"{rec.get('done_units', rec.get('cached_units', 0))} not submitted, the store "
            "vouching for them; the rest ran and found their shards done)",
        ],
        ["ran on", esc(", ".join(rec.get("devices", [])) or "?")],
        ["orchestrator", esc(rec.get("orchestrator", "?"))],
    ]
    if rec.get("flow_run"):
        fr = rec["flow_run"]
        link = (
            f'<a href="{esc(fr["url"])}">{esc(fr["name"])}</a>'
            if fr.get("url")
            else esc(fr.get("name", ""))
        )
        gone = "" if fr.get("url") else " (no link: the temporary Prefect server ended with it)"
        run.append(["Prefect flow run", f"{link} <code>{esc(fr.get('id', ''))}</code>{esc(gone)}"])
    if len(audit.records) > 1:
        run.append(["earlier audits of this store", str(len(audit.records) - 1)])
    html_ += "<h3>Latest audit</h3>" + _table(None, run, "info")
    total = sum(rec["stage_seconds"].values()) or 1.0
    stages = [
        [esc(s), f"{v:.1f}", f"{100 * v / total:.0f}%"]
        for s, v in sorted(rec["stage_seconds"].items(), key=lambda kv: -kv[1])
    ]
    html_ += "<h3>Stage timings</h3>"
    html_ += (
        _table(["stage", "seconds (summed over shards)", "share"], stages)
        if stages
        else _missing("Every unit was already done: nothing was computed in this audit.")
    )
    html_ += "<h3>Failures</h3>"
    if rec["failed"]:
        html_ += _table(["unit", "error"], [[esc(u), esc(w)] for u, w in rec["failed"].items()])
    else:
        html_ += "<p>None: every unit completed.</p>"
    html_ += _versions(rec.get("environment", {}), "the audit's environment")
    spec = yaml.safe_dump(rec.get("spec", {}), sort_keys=False)
    return html_ + f"<details><summary>The spec</summary><pre>{esc(spec)}</pre></details>"


def _warnings_section(audit: Contents) -> str:
    """Degenerate logits and maps the store's checks found (`pipeline.checks`)."""
    if not audit.store.has(schema.CHECKS):
        return _missing(
            "This store has no checks (stores written before salaudit checked logits and "
            "maps have none)."
        )
    found = warnings(audit.store)
    if not found:
        return (
            "<p>None: the logits vary over the samples and every map checked is finite and "
            "not all zero.</p>"
        )
    items = "".join(f"<li>{esc(line)}</li>" for line in found)
    return f'<ul class="warnings missing">{items}</ul>'


def _versions(env: dict[str, str], title: str) -> str:
    rows = [[esc(k), esc(v)] for k, v in env.items()]
    return f"<h3>Versions ({esc(title)})</h3>" + _table(["package", "version"], rows, "info")


def _headline_section(rows: list[dict[str, Any]]) -> str | Missing:
    table = headline_table(rows)
    if table is None:
        return Missing("No headline metrics in this store.")
    return (
        table.html()
        + "<p class='note'>Means over samples; ↑ higher is better, ↓ lower is better; * the "
        "method beats its reference (one-sided paired t-test, Holm-corrected p &lt; 0.05).</p>"
    )


def _metric_sections(tables: list[MetricTable], out: Path, root: Path) -> str:
    parts = []
    for metric in dict.fromkeys(t.metric for t in tables):
        group = [t for t in tables if t.metric == metric]
        conds = [t.label or metric for t in group]
        better = "higher" if higher_is_better(metric) else "lower"
        parts.append(
            f'<section class="metric" id="metric-{metric}"><h3>{esc(group[0].title)}'
            f" <span class='dir'>({better} is better)</span></h3><div class='row'>"
        )
        methods = list(dict.fromkeys(r["method"] for t in group for r in t.methods))
        rows = [
            [esc(m), str(max((t.method(m) or {"n": 0})["n"] for t in group))]
            + [_mean_se(t.method(m)) for t in group]
            for m in methods
        ]
        dim = group[0].dim
        header = ["method", "n", *([f"{dim} {c}" for c in conds] if dim else ["mean ± SE"])]
        parts.append(_table(header, rows, "methods"))
        rows = [
            [f"{esc(p['method'])} − {esc(p['reference'])}", *([esc(c)] if dim else [])]
            + [f"{fmt(p['mean_difference'])} ± {fmt(p['standard_error'])}", fmt_p(p["p_value"])]
            + [f"<b>{fmt_p(p['p_holm'])}</b>" if p["p_holm"] < ALPHA else fmt_p(p["p_holm"])]
            for c, t in zip(conds, group, strict=True)
            for p in t.pairs
        ]
        header = ["method − reference", *([dim] if dim else []), "diff ± SE", "p", "p (Holm)"]
        parts.append(
            _table(header, rows, "pairs")
            if rows
            else _missing("No method pairs to compare (e.g. dance-grad with grad).")
        )
        if variables()[metric] not in in_section(Section.SANITY):
            panels = [
                (c, {m: t.values[m] for m in methods}) for c, t in zip(conds, group, strict=True)
            ][:4]
            path = figures.box_plots(panels, out / f"box-{metric}.png")
            parts.append(_figure(path, root, f"box plots of {metric} per method"))
        parts.append("</div></section>")
    return "".join(parts)


def _maps_section(audit: Contents, out: Path, root: Path) -> str:
    maps, inputs = audit.group(schema.MAPS), audit.group(schema.INPUTS)
    if maps is None or not maps.data_vars:
        return Missing("The store holds no maps: salaudit explain (or salaudit audit) writes them.")
    if "feature" in inputs["image"].dims:
        return _feature_section(audit, maps, inputs, out, root)
    if "token" in inputs["image"].dims:
        return _sentence_section(audit, maps, inputs)
    methods = audit.methods
    k = min(GRID_SAMPLES, maps.sizes["sample"])
    samples = maps["sample"].values[:k]
    metrics = audit.group(schema.METRICS)
    caption = next((v for v in variables().values() if v.caption), None)
    scored = metrics is not None and caption is not None and caption.name in metrics
    raw = {m: maps[m].sel(sample=samples).values for m in methods}
    shown = {m: display_map(raw[m]) for m in methods}

    def column(m: str) -> tuple[str, np.ndarray, bool, list[str]]:
        """A method's maps, captioned with what is wrong with one, else its caption metric."""
        captions = [map_state(r) for r in raw[m]]
        if scored and m in metrics["method"].values:
            values = metrics[caption.name].sel({"method": m}).sel(sample=samples).values
            short = caption.short or caption.name
            captions = [c or f"{short} {fmt(x)}" for c, x in zip(captions, values, strict=True)]
        return m, shown[m], False, captions

    columns = []
    plain = [m for m in methods if decoy_generator(m) is None]
    for m in (m for m in plain if method_info(m).family == "gradient"):
        columns.append(column(m))
        for v in (v for v in methods if decoy_generator(v) and split_name(v)[0] == m):
            columns += [column(v), (f"{v} − {m}", shown[v] - shown[m], True, [""] * k)]
    covered = {c[0] for c in columns}
    columns += [column(m) for m in methods if m not in covered]
    grid = _map_grid(audit, inputs, samples, columns, out / "maps", root)
    note = (
        "<p class='note'>The first samples of the store, each map at its own resolution (at "
        f"least {MIN_TILE} px), the data's box outlined in cyan. Maps: max |value| over "
        "channels, winsorised at the 99th percentile, scaled to [0, 1] (METHODS.md; inferno, "
        "black 0 to yellow 1); a difference column is the decoy-enhanced map minus the plain "
        "one (DANCE figure 2A), blue where decoys lower the saliency, red where they raise it; "
        "hatched grey: a map never computed or not finite."
        + (_caption_note(caption) if scored else "")
        + "</p>"
    )
    robust = [n for n, info in registry().items() if info.family != "gradient"]
    missing = [m for m in robust if m not in methods]
    extra = (
        _missing(f"Not in this store: {', '.join(missing)} (add them to the spec's methods).")
        if missing
        else ""
    )
    return grid + note + extra


def _feature_section(audit: Contents, maps, inputs, out: Path, root: Path) -> str:
    """A table's maps: per sample, bars of its feature values and of each plain method's and
    its optimised-decoy form's saliency (the controls are in the metric tables)."""
    names = (audit.attrs.get("label_names"), audit.attrs.get("prediction_names"))
    features = [str(f) for f in inputs["feature"].values]
    shown = _shown_methods(audit)
    parts = []
    for sample in maps["sample"].values[: min(GRID_SAMPLES, maps.sizes["sample"])]:
        label = int(inputs["label"].sel(sample=sample))
        pred = int(inputs["prediction"].sel(sample=sample))
        who = (
            f"#{sample} label {class_name(names[0], label)}, predicted {class_name(names[1], pred)}"
        )
        panels = [("feature value", inputs["image"].sel(sample=sample).values)]
        panels += [(m, maps[m].sel(sample=sample).values) for m in shown]
        path = figures.feature_bars(features, panels, out / "maps" / f"{sample}.png", who)
        parts.append(_figure(path, root, f"feature saliency of sample {who}"))
    note = (
        "<p class='note'>The first samples of the store: each sample's feature values (grey, "
        "in [0, 1]) and each method's signed saliency per feature, scaled to max |value| 1 "
        "(red positive, blue negative); the decoy-enhanced forms (dance-) beside their bases, "
        "whose range aggregation is never negative.</p>"
    )
    return "".join(parts) + note


def _shown_methods(audit: Contents) -> list[str]:
    """The plain methods and their optimised-decoy forms (the controls are in the tables)."""
    return [m for m in audit.methods if decoy_generator(m) in (None, "dance") and "-mean-" not in m]


def _sentence_section(audit: Contents, maps, inputs) -> str:
    """A text's maps as DANCE fig. 3A: per sample and method its words, each word's background
    shaded by its saliency (the mean over the word's embedding dims), scaled to the map's
    largest |word score|."""
    names = (audit.attrs.get("label_names"), audit.attrs.get("prediction_names"))
    parts = []
    for sample in maps["sample"].values[: min(GRID_SAMPLES, maps.sizes["sample"])]:
        words = [str(w) for w in inputs["word"].sel(sample=sample).values]
        real = inputs["padding"].sel(sample=sample).values.astype(bool)
        label = int(inputs["label"].sel(sample=sample))
        pred = int(inputs["prediction"].sel(sample=sample))
        rows = []
        for m in _shown_methods(audit):
            score = maps[m].sel(sample=sample).values.astype(float).mean(-1)
            top = np.nanmax(np.abs(score[real])) if real.any() else 0.0
            cells = "".join(
                _shaded(w, v / top if top > 0 else 0.0)
                for w, v, ok in zip(words, score, real, strict=True)
                if ok
            )
            rows.append([esc(m), f"<span class='sentence'>{cells}</span>"])
        who = (
            f"#{sample} label {class_name(names[0], label)}, predicted {class_name(names[1], pred)}"
        )
        parts.append(f"<h3>{esc(who)}</h3>" + _table(["method", "words"], rows, "sentences"))
    note = (
        "<p class='note'>Each word's background: its saliency, the mean of its map over the "
        "embedding dims, scaled to the sentence's largest |score| (red positive, blue negative, "
        "white 0); the decoy-enhanced forms (dance-, range over the population) beside their "
        "bases, as DANCE figure 3A.</p>"
    )
    return "".join(parts) + note


def _shaded(word: str, value: float) -> str:
    colour = "214,39,40" if value >= 0 else "31,119,180"
    alpha = min(1.0, abs(float(np.nan_to_num(value))))
    return (
        f"<span style='background:rgba({colour},{alpha:.2f})' "
        f"title='{value:+.2f}'>{esc(word)}</span> "
    )


def _map_grid(audit: Contents, inputs, samples, columns, folder: Path, root: Path) -> str:
    """A table of tiles: per sample its image (box drawn, label and prediction named) and one
    PNG per column, each shown at its own resolution within [160, 224] px."""
    folder.mkdir(parents=True, exist_ok=True)
    names = (audit.attrs.get("label_names"), audit.attrs.get("prediction_names"))
    boxes = inputs["bbox"].sel(sample=samples).values if "bbox" in inputs else None
    images = inputs["image"].sel(sample=samples).values
    width = shown_width(images.shape[-1])

    def cell(img, name: str, alt: str, text: str) -> str:
        img.save(folder / name)
        rel = (folder / name).relative_to(root).as_posix()
        return (
            f'<td><figure class="tile"><img src="{esc(rel)}" width="{width}" alt="{esc(alt)}">'
            f"<figcaption>{esc(text)}</figcaption></figure></td>"
        )

    rows = []
    for r, sample in enumerate(samples):
        box = None if boxes is None else boxes[r]
        label = int(inputs["label"].sel(sample=sample))
        pred = int(inputs["prediction"].sel(sample=sample))
        who = (
            f"#{sample} label {class_name(names[0], label)}, predicted {class_name(names[1], pred)}"
        )
        cells = [cell(tile(image_rgb(images[r]), box), f"{r}-image.png", f"image {who}", who)]
        for c, (title, values, diff, captions) in enumerate(columns):
            img = tile(map_rgb(values[r], diverging=diff), box)
            cells.append(cell(img, f"{r}-{c}.png", f"{title} of #{sample}", captions[r]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{esc(t)}</th>" for t in ["image", *(c[0] for c in columns)])
    return (
        f'<div class="grid"><table class="maps"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _caption_note(var) -> str:
    better = "higher" if var.higher_is_better else "lower"
    return f" {esc(var.short or var.name)}: each map's {esc(var.name)} ({better} is better)."


def _attack_rows(audit: Contents) -> list[list[str]]:
    """Per attack (and label of its extra dimension), its success rate and mean L_inf."""
    rows = []
    for a in audit.subgroups(schema.ATTACKS):
        g = audit.group(schema.attack(a))
        success, linf = g["success"].values.astype(float), g["linf"].values
        extra = [d for d in g["success"].dims if d != "sample"]
        if not extra:
            rows.append([esc(a), fmt(success.mean()), fmt(255 * linf.mean())])
            continue
        for i, r in enumerate(g[extra[0]].values):
            label = esc(f"{a} {extra[0]} {r:g}/255")
            rows.append([label, fmt(success[:, i].mean()), fmt(255 * linf[:, i].mean())])
    return rows


def _robustness_section(audit: Contents, tables, out: Path, root: Path) -> str | Missing:
    if not audit.subgroups(schema.ATTACKS):
        url = audit.store.url
        return Missing(
            "No attacks in this store: "
            + NEXT_STAGE["attacks"].format(url=url)
            + " and "
            + NEXT_STAGE["prediction"].format(url=url)
            + " add them, then salaudit evaluate."
        )
    html_ = _table(["attack", "success rate", "mean L∞ × 255"], _attack_rows(audit))
    methods = audit.methods
    panels, parts = [], []
    for var in in_section(Section.ROBUSTNESS):
        group = [t for t in tables if t.metric == var.name]
        if not group:
            continue
        labels = [t.label for t in group]
        rows = {m: [t.mean(m) for t in group] for m in methods}
        rows = {m: v for m, v in rows.items() if np.isfinite(v).any()}
        title = f"{var.name} {group[0].arrow}"
        panels.append((title, list(rows), labels, np.array(list(rows.values()))))
        parts.append(
            f"<h3>{esc(var.title)}</h3>"
            + _table(
                ["method", *labels],
                [[esc(m), *[fmt(v) for v in values]] for m, values in rows.items()],
                "matrix",
            )
        )
    if not panels:
        return html_ + _missing(
            f"The attacks are not scored yet: salaudit evaluate --store {audit.store.url}"
        )
    path = figures.matrices(panels, out / "robustness.png")
    return (
        html_ + _figure(path, root, "robustness matrix: methods against attacks") + "".join(parts)
    )


def _localisation_section(audit: Contents, tables, methods: list[str]) -> str | Missing:
    names = [v.name for v in in_section(Section.LOCALISATION)]
    chosen = [t for t in tables if t.metric in names]
    if not chosen:
        if "bbox" not in audit.group(schema.INPUTS):
            return Missing("The data has no bounding boxes, so there is no localisation.")
        return Missing(f"Not scored yet: salaudit evaluate --store {audit.store.url}")
    header = ["method"] + [f"{t.metric} {t.label}".strip() for t in chosen]
    rows = [[esc(m), *[_mean_se(t.method(m)) for t in chosen]] for m in methods]
    return _table(header, rows, Section.LOCALISATION) + (
        "<p class='note'>Mean ± standard error over samples (BIG appendix B.1; box accuracy: "
        "DANCE A17, by thresholding).</p>"
    )


def _sanity_section(
    audit: Contents, tables, methods: list[str], out: Path, root: Path
) -> str | Missing:
    names = [v.name for v in in_section(Section.SANITY)]
    chosen = [t for t in tables if t.metric in names]
    if not chosen:
        return Missing(
            "Not computed: the sanity check recomputes every map once per randomised layer, so "
            f"it runs only when asked: salaudit evaluate --store {audit.store.url} --metrics "
            "sanity (or metrics: [all] in the spec)."
        )
    panels = []
    for metric in names:
        group = [t for t in chosen if t.metric == metric]
        lines = {m: np.array([t.mean(m) for t in group]) for m in methods}
        title = metric.removeprefix(family_of(metric).name + "_")
        panels.append((title, [t.label for t in group], lines))
    path = figures.curves(panels, out / "sanity.png", "similarity to the original map")
    _, layers, lines = panels[-1]  # Spearman of |maps|, as a table
    rows = [[esc(m), *[fmt(v) for v in values]] for m, values in lines.items()]
    return (
        _figure(path, root, "sanity check: similarity against randomised layer")
        + "<p class='note'>Layers randomised cascading from the top (Adebayo et al.); a map "
        "that stays similar as the model is destroyed does not explain the model. The table: "
        "Spearman of |maps|.</p>" + _table(["method", *layers], rows, "matrix")
    )


def _decoy_section(audit: Contents, out: Path, root: Path) -> str | Missing:
    metrics = audit.group(schema.METRICS)
    found = {
        generator_of(str(v)): str(v)
        for v in (metrics.data_vars if metrics is not None else [])
        if generator_of(str(v))
    }
    if not found:
        return Missing(
            "No decoy populations scored: "
            + NEXT_STAGE["decoys"].format(url=audit.store.url)
            + " keeps them (keep_decoys: true in a spec), then salaudit evaluate."
        )
    rows, panels = [], {}
    for g, var in found.items():
        v = metrics[var].values.astype(float)
        s = summary(np.nanmean(v, axis=1))
        layer = audit.store.array_attrs(schema.decoys(g, "population")).get("layer", "?")
        rows.append(
            [
                esc(g),
                esc(layer),
                str(v.shape[1]),
                f"{fmt(s['mean'])} ± {fmt(s['standard_error'])}",
                fmt(float(np.nanmedian(v))),
            ]
        )
        panels[g] = v[np.isfinite(v)]
    path = figures.box_plots(
        [("relative representation difference", panels)], out / "decoys.png", log=True
    )
    note = "<p class='note'>max |F_l(decoy) - F_l(x)| / max |F_l(x)| at the decoy layer "
    note += "(DANCE preprint figure 5): decoys should stay far below blurred images.</p>"
    if "dance" in panels and "blur" in panels:
        ratio = np.nanmean(panels["blur"]) / max(np.nanmean(panels["dance"]), 1e-30)
        note += f"<p>Blurred images differ {ratio:.3g} times as much as the optimised decoys.</p>"
    elif "blur" not in panels:
        note += _missing("No blur population to compare with: add blur-<base> to the methods.")
    header = ["generator", "layer", "decoys per sample", "mean ± SE (over samples)", "median"]
    return _table(header, rows) + _figure(path, root, "decoy validity per generator") + note


# --- the page ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.5em 3em;
color:#1b1b1b}
h1{margin:.6em 0 .1em}h2{border-bottom:2px solid #006ba4;padding-bottom:.15em;margin-top:1.6em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:12.5px}
th,td{border:1px solid #ccc;padding:.2em .55em;text-align:right}
th:first-child,td:first-child{text-align:left}table.info td{text-align:left}
thead th{background:#eef3f7}figure{margin:.5em 0}img{max-width:100%;height:auto}
.missing{background:#fff4e5;border-left:4px solid #ff800e;padding:.4em .8em}
.note{color:#555;font-size:12.5px}.dir{font-weight:normal;color:#555}
.row{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start}
pre{background:#f6f6f6;padding:.6em;overflow:auto}code{font-size:12px}
.grid{overflow-x:auto}table.maps td,table.maps th{border:0;padding:2px 3px;text-align:center;
vertical-align:top}table.maps img{max-width:none;image-rendering:pixelated}
figure.tile{margin:0}figure.tile figcaption{font-size:11px;color:#333;max-width:224px}
ul.warnings li{margin:.2em 0}table.sentences td{text-align:left}
.sentence span{padding:0 .15em;border-radius:2px}
"""


def render(store: Store, out: Path) -> Report:
    """Write index.html, figures/*.png and the CSV tables of `store` into the folder `out`."""
    audit = Contents(store)
    if audit.group(schema.INPUTS) is None:  # every section below may read the inputs
        raise SalauditError(
            f"store {store.url} holds no inputs yet; run salaudit audit (or salaudit explain) "
            "into it first"
        )
    figs = out / "figures"
    metrics = audit.group(schema.METRICS)
    tables = metric_tables(metrics) if metrics is not None else []
    methods = audit.methods
    head = headline(tables, methods)
    body = {
        "run": _run_section(audit),
        "warnings": _warnings_section(audit),
        "headline": _headline_section(head),
        "metrics": _metric_sections(tables, figs, out)
        if tables
        else Missing(f"No metrics in this store: salaudit evaluate --store {store.url}"),
        "maps": _maps_section(audit, figs, out),
        Section.ROBUSTNESS: _robustness_section(audit, tables, figs, out),
        Section.LOCALISATION: _localisation_section(audit, tables, methods),
        Section.SANITY: _sanity_section(audit, tables, methods, figs, out),
        Section.DECOYS: _decoy_section(audit, figs, out),
    }
    missing = {k: c.why for k, c in body.items() if isinstance(c, Missing)}
    body = {k: _missing(c.why) if isinstance(c, Missing) else c for k, c in body.items()}
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in SECTIONS.items())
    sections = "".join(
        f'<section id="{k}"><h2>{esc(SECTIONS[k])}</h2>{content}</section>'
        for k, content in body.items()
    )
    title = f"salaudit report: {audit.attrs.get('model', '?')} on {audit.attrs.get('data', '?')}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
        f"</title><style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
        f"<p class='note'>{esc(store.url)} · {len(methods)} methods · written {stamp} by "
        f"salaudit {__version__}</p><nav>{nav}</nav></header>{sections}</body></html>"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(page, encoding="utf-8")
    _write_csv(tables, out)
    return Report(str(out / "index.html"), head, tables, missing)


def _write_csv(tables: list[MetricTable], out: Path) -> None:
    """methods.csv and comparisons.csv: every number of the tables at full precision."""
    keys = ("mean_difference", "standard_error", "p_value", "p_holm")
    _csv(
        out / "methods.csv",
        ["metric", "condition", "method", "n", "mean", "standard_error"],
        (
            [t.metric, t.condition, r["method"], r["n"], repr(r["mean"]), repr(r["standard_error"])]
            for t in tables
            for r in t.methods
        ),
    )
    _csv(
        out / "comparisons.csv",
        ["metric", "condition", "method", "reference", "n", *keys],
        (
            [t.metric, t.condition, p["method"], p["reference"], p["n"]]
            + [repr(float(p[k])) for k in keys]
            for t in tables
            for p in t.pairs
        ),
    )


def _csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_report(url: str, out: str | None = None, storage_options: dict | None = None) -> Report:
    """Build the report of the store at `url` into `out` (a folder or s3:// URL; default
    beside the store). Remote reports are built in a scratch folder, then uploaded."""
    out = out or schema.report_location(url)
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"no salaudit store at {url}; run salaudit audit into it first")
    if not is_remote(out):
        target = Path(out)
        if target.exists():
            shutil.rmtree(target / "figures", ignore_errors=True)
        return render(store, target)
    fs, path = filesystem(out, storage_options)
    with tempfile.TemporaryDirectory(prefix="salaudit-report-") as scratch:
        report = render(store, Path(scratch))
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.put(f"{scratch}/", path, recursive=True)
    report.location = f"{out.rstrip('/')}/index.html"
    return report
