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
import html
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import figures
from .display import display_map
from .errors import SalauditError
from .evaluate import NEXT_STAGE, metric_conditions
from .io import is_remote
from .registry import ROBUST_METHODS, split_name
from .stats import HIGHER_IS_BETTER, compare, method_pairs, summary
from .store import Store
from .version import __version__, environment

SECTIONS = {
    "run": "The run",
    "headline": "Headline",
    "metrics": "Metrics and paired tests",
    "maps": "Saliency maps",
    "robustness": "Robustness to attacks",
    "localisation": "Localisation",
    "sanity": "Sanity check",
    "decoys": "Decoy validity",
}
METRIC_NAMES = {
    "fidelity": "Fidelity S_F: -log p_c(top 20% kept) / p_c(x)",
    "deletion": "Deletion D: area under p_c as the most salient pixels go",
    "preservation": "Preservation P: area under p_c as the least salient pixels go",
    "r_score": "R: harmonic mean of P and 1 - D",
    "sensitivity": "Sensitivity S_S: |E_bin(x) - E_bin(x')| / |x - x'|",
    "spearman": "Spearman rank correlation of clean and attacked maps",
    "topk_intersection": "Top-2% intersection of clean and attacked maps",
    "retrieval_adv": "Class retrieval with the attacked image's mask",
    "retrieval_clean": "Class retrieval with the clean image's mask",
    "loc": "Loc: |P n B| / (|B| + |P \\ B|)",
    "energy_game": "Energy game: share of positive attribution inside the box",
    "positive_percentage": "Positive percentage inside the box",
    "concentration": "Concentration around the centre of mass inside the box",
    "box_accuracy": "Box accuracy: IoU of the thresholded map's box > 0.5",
    "sanity_ssim": "Sanity check: SSIM with the randomised model's maps",
    "sanity_spearman": "Sanity check: Spearman with the randomised model's maps",
    "sanity_spearman_abs": "Sanity check: Spearman of |maps| with the randomised model's",
}
HEADLINE = ("fidelity", "r_score", "sensitivity", "spearman", "retrieval_adv", "loc", "energy_game")
ROBUSTNESS = ("sensitivity", "spearman", "topk_intersection", "retrieval_adv", "retrieval_clean")
LOCALISATION = ("loc", "energy_game", "positive_percentage", "concentration", "box_accuracy")
SANITY = ("sanity_ssim", "sanity_spearman", "sanity_spearman_abs")
GRID_SAMPLES = 4
ALPHA = 0.05


@dataclass
class MetricTable:
    """One metric under one condition: per method n, mean and standard error, and the paired
    comparisons of `stats.compare` (Holm across this table's pairs)."""

    metric: str
    condition: str
    methods: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    values: dict[str, np.ndarray]  # method -> per-sample values

    def method(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.methods if r["method"] == name), None)

    def mean(self, name: str) -> float:
        return (self.method(name) or {"mean": np.nan})["mean"]

    @property
    def dim(self) -> str:
        """The metric's own dimension ("" for none): attack, radius, threshold, layer."""
        return self.condition.partition("=")[0]

    @property
    def label(self) -> str:
        """The condition's label ("" for none), e.g. topk@grad or 8."""
        return self.condition.partition("=")[2]


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


class Audit:
    """The groups of a store, read once each (None where the store lacks them)."""

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
        maps = self.group("maps")
        if maps is None:
            return []
        stored = [str(v) for v in maps.data_vars]
        named = self.attrs.get("config", {}).get("methods", [])
        return [m for m in named if m in stored] + sorted(set(stored) - set(named))

    def subgroups(self, path: str) -> list[str]:
        if not self.store.has(path):
            return []
        return sorted(self.store.root("r")[path].group_keys())


def metric_tables(metrics) -> list[MetricTable]:
    """Every metric and condition of a `metrics` group, its statistics computed afresh."""
    names = [str(v) for v in metrics["method"].values]
    pairs = method_pairs(names)
    out = []
    for var, condition, sub in metric_conditions(metrics):
        values = {m: sub.sel({"method": m}).values for m in names}
        rows = [{"method": m, **summary(values[m])} for m in names]
        out.append(
            MetricTable(
                var,
                condition,
                [r for r in rows if r["n"]],
                compare(values.__getitem__, pairs, HIGHER_IS_BETTER[var]),
                values,
            )
        )
    return out


def headline(tables: list[MetricTable], methods: list[str]) -> list[dict[str, Any]]:
    """Per method, the mean of each headline metric (pgd retrieval at its largest radius),
    with `*` where it beats a reference with Holm-corrected p < 0.05."""
    chosen = [t for t in tables if t.metric in HEADLINE]
    radii = [t for t in chosen if t.dim == "radius"]
    if radii:
        largest = max(radii, key=lambda t: float(t.label))
        chosen = [t for t in chosen if t.dim != "radius" or t is largest]
    chosen.sort(key=lambda t: HEADLINE.index(t.metric))
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for t in chosen:
            r = t.method(m)
            better = any(p["method"] == m and p["p_holm"] < ALPHA for p in t.pairs)
            row[_column(t)] = "" if r is None else fmt(r["mean"]) + (" *" if better else "")
        rows.append(row)
    return rows


def _column(t: MetricTable) -> str:
    arrow = "↑" if HIGHER_IS_BETTER[t.metric] else "↓"
    return " ".join(part for part in (t.metric, t.label, arrow) if part)


# --- numbers and HTML ----------------------------------------------------------------------------


def fmt(v: float) -> str:
    """A number as the report prints it: 3 significant digits, an en dash for NaN."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.3g}"


def fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with _esc), headers are text."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header or [])
    head = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _figure(path: Path, root: Path, alt: str) -> str:
    rel = path.relative_to(root).as_posix()
    return f'<figure><img src="{_esc(rel)}" alt="{_esc(alt)}"></figure>'


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _mean_se(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{fmt(r['mean'])} ± {fmt(r['standard_error'])}"


# --- sections ------------------------------------------------------------------------------------


def _run_section(audit: Audit) -> str:
    a, inputs = audit.attrs, audit.group("inputs")
    n = inputs.sizes["sample"]
    correct = int((inputs["label"] == inputs["prediction"]).sum())
    info = [
        ["store", _esc(audit.store.url)],
        ["model", _esc(a.get("model", "?"))],
        ["model fingerprint", f"<code>{_esc(a.get('model_fingerprint', '?'))}</code>"],
        ["data", _esc(a.get("data", "?"))],
        ["data fingerprint", f"<code>{_esc(a.get('data_fingerprint', '?'))}</code>"],
        ["selection", _esc(json.dumps(a.get("selection", {})))],
        ["samples", f"{n} ({correct} classified correctly)"],
        ["methods", _esc(", ".join(audit.methods) or "none")],
        ["attacks", _esc(", ".join(audit.subgroups("attacks")) or "none")],
        ["written by", _esc(f"salaudit {a.get('salaudit_version', '?')}")],
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
            f"{rec['units']} ({rec['computed_units']} computed, {rec['cached_units']} "
            "from the cache, the rest already in the store)",
        ],
        ["ran on", _esc(", ".join(rec.get("devices", [])) or "?")],
        ["orchestrator", _esc(rec.get("orchestrator", "?"))],
    ]
    if rec.get("flow_run"):
        fr = rec["flow_run"]
        link = (
            f'<a href="{_esc(fr["url"])}">{_esc(fr["name"])}</a>'
            if fr.get("url")
            else _esc(fr.get("name", ""))
        )
        run.append(["Prefect flow run", f"{link} <code>{_esc(fr.get('id', ''))}</code>"])
    if len(audit.records) > 1:
        run.append(["earlier audits of this store", str(len(audit.records) - 1)])
    html_ += "<h3>Latest audit</h3>" + _table(None, run, "info")
    total = sum(rec["stage_seconds"].values()) or 1.0
    stages = [
        [_esc(s), f"{v:.1f}", f"{100 * v / total:.0f}%"]
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
        html_ += _table(["unit", "error"], [[_esc(u), _esc(w)] for u, w in rec["failed"].items()])
    else:
        html_ += "<p>None: every unit completed.</p>"
    html_ += _versions(rec.get("environment", {}), "the audit's environment")
    spec = yaml.safe_dump(rec.get("spec", {}), sort_keys=False)
    return html_ + f"<details><summary>The spec</summary><pre>{_esc(spec)}</pre></details>"


def _versions(env: dict[str, str], title: str) -> str:
    rows = [[_esc(k), _esc(v)] for k, v in env.items()]
    return f"<h3>Versions ({_esc(title)})</h3>" + _table(["package", "version"], rows, "info")


def _headline_section(rows: list[dict[str, Any]]) -> str | Missing:
    if not rows or len(rows[0]) == 1:
        return Missing("No headline metrics in this store.")
    header = list(rows[0])
    body = [[_esc(r[h]) for h in header] for r in rows]
    return (
        _table(header, body)
        + "<p class='note'>Means over samples; ↑ higher is better, ↓ lower is better; * the "
        "method beats its reference (one-sided paired t-test, Holm-corrected p &lt; 0.05).</p>"
    )


def _metric_sections(tables: list[MetricTable], out: Path, root: Path) -> str:
    parts = []
    for metric in dict.fromkeys(t.metric for t in tables):
        group = [t for t in tables if t.metric == metric]
        conds = [t.label or metric for t in group]
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        parts.append(
            f'<section class="metric" id="metric-{metric}"><h3>{_esc(METRIC_NAMES[metric])}'
            f" <span class='dir'>({better} is better)</span></h3><div class='row'>"
        )
        methods = list(dict.fromkeys(r["method"] for t in group for r in t.methods))
        rows = [
            [_esc(m), str(max((t.method(m) or {"n": 0})["n"] for t in group))]
            + [_mean_se(t.method(m)) for t in group]
            for m in methods
        ]
        dim = group[0].dim
        header = ["method", "n", *([f"{dim} {c}" for c in conds] if dim else ["mean ± SE"])]
        parts.append(_table(header, rows, "methods"))
        rows = [
            [f"{_esc(p['method'])} − {_esc(p['reference'])}", *([_esc(c)] if dim else [])]
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
        if not metric.startswith("sanity_"):
            panels = [
                (c, {m: t.values[m] for m in methods}) for c, t in zip(conds, group, strict=True)
            ][:4]
            path = figures.box_plots(panels, out / f"box-{metric}.png")
            parts.append(_figure(path, root, f"box plots of {metric} per method"))
        parts.append("</div></section>")
    return "".join(parts)


def _maps_section(audit: Audit, out: Path, root: Path) -> str:
    maps, inputs = audit.group("maps"), audit.group("inputs")
    if maps is None or not maps.data_vars:
        return Missing("The store holds no maps: salaudit explain (or salaudit audit) writes them.")
    methods = audit.methods
    k = min(GRID_SAMPLES, maps.sizes["sample"])
    samples = maps["sample"].values[:k]
    metrics = audit.group("metrics")
    scored = metrics is not None and "fidelity" in metrics

    def column(m: str) -> tuple[str, np.ndarray, bool, list[str]]:
        """A method's maps, captioned with each one's S_F where it is scored."""
        captions = [""] * k
        if scored and m in metrics["method"].values:
            sf = metrics["fidelity"].sel({"method": m}).sel(sample=samples).values
            captions = [f"S_F {fmt(x)}" for x in sf]
        return m, shown[m], False, captions

    shown = {m: display_map(maps[m].sel(sample=samples).values) for m in methods}
    columns = []
    for m in (m for m in methods if split_name(m)[1] is None and m not in ROBUST_METHODS):
        columns.append(column(m))
        for v in (v for v in methods if split_name(v)[1] is not None and split_name(v)[0] == m):
            columns += [column(v), (f"{v} − {m}", shown[v] - shown[m], True, [""] * k)]
    covered = {c[0] for c in columns}
    columns += [column(m) for m in methods if m not in covered]
    image = inputs["image"].sel(sample=samples).values.transpose(0, 2, 3, 1)
    boxes = inputs["bbox"].sel(sample=samples).values if "bbox" in inputs else None
    pred = inputs["prediction"].sel(sample=samples).values
    titles = [f"#{s} class {c}" for s, c in zip(samples, pred, strict=True)]
    path = figures.map_grid(image, titles, columns, out / "maps.png", boxes)
    note = (
        "<p class='note'>The first samples of the store. Maps: max |value| over channels, "
        "winsorised at the 99th percentile, scaled to [0, 1] (METHODS.md); a difference "
        "column is the decoy-enhanced map minus the plain one (DANCE figure 2A), blue where "
        "decoys lower the saliency, red where they raise it. S_F: each map's fidelity (lower "
        "is better).</p>"
    )
    missing = [m for m in ("relex", "bsm", "big") if m not in methods]
    extra = (
        _missing(f"Not in this store: {', '.join(missing)} (add them to the spec's methods).")
        if missing
        else ""
    )
    return _figure(path, root, "saliency maps of the first samples") + note + extra


def _robustness_section(audit: Audit, tables, out: Path, root: Path) -> str | Missing:
    attacks = audit.subgroups("attacks")
    if not attacks:
        url = audit.store.url
        return Missing(
            "No attacks in this store: "
            + NEXT_STAGE["attacks"].format(url=url)
            + " and "
            + NEXT_STAGE["pgd"].format(url=url)
            + " add them, then salaudit evaluate."
        )
    rows = []
    for a in attacks:
        g = audit.group(f"attacks/{a}")
        success = g["success"].values.astype(float)
        if "radius" in g["success"].dims:
            for i, r in enumerate(g["radius"].values):
                rows.append(
                    [
                        _esc(f"{a} radius {r:g}/255"),
                        fmt(success[:, i].mean()),
                        fmt(255 * g["linf"].values[:, i].mean()),
                    ]
                )
        else:
            rows.append([_esc(a), fmt(success.mean()), fmt(255 * g["linf"].values.mean())])
    html_ = _table(["attack", "success rate", "mean L∞ × 255"], rows)
    methods = audit.methods
    panels, parts = [], []
    for metric in ROBUSTNESS:
        group = [t for t in tables if t.metric == metric]
        if not group:
            continue
        labels = [t.label for t in group]
        rows = {m: [t.mean(m) for t in group] for m in methods}
        rows = {m: v for m, v in rows.items() if np.isfinite(v).any()}
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        panels.append((f"{metric} {arrow}", list(rows), labels, np.array(list(rows.values()))))
        parts.append(
            f"<h3>{_esc(METRIC_NAMES[metric])}</h3>"
            + _table(
                ["method", *labels],
                [[_esc(m), *[fmt(v) for v in values]] for m, values in rows.items()],
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


def _localisation_section(audit: Audit, tables, methods: list[str]) -> str | Missing:
    chosen = [t for t in tables if t.metric in LOCALISATION]
    if not chosen:
        if "bbox" not in audit.group("inputs"):
            return Missing("The data has no bounding boxes, so there is no localisation.")
        return Missing(f"Not scored yet: salaudit evaluate --store {audit.store.url}")
    header = ["method"] + [f"{t.metric} {t.label}".strip() for t in chosen]
    rows = [[_esc(m), *[_mean_se(t.method(m)) for t in chosen]] for m in methods]
    return _table(header, rows, "localisation") + (
        "<p class='note'>Mean ± standard error over samples (BIG appendix B.1; box accuracy: "
        "DANCE A17, by thresholding).</p>"
    )


def _sanity_section(
    audit: Audit, tables, methods: list[str], out: Path, root: Path
) -> str | Missing:
    chosen = [t for t in tables if t.metric in SANITY]
    if not chosen:
        return Missing(
            "Not computed: the sanity check recomputes every map once per randomised layer, so "
            f"it runs only when asked: salaudit evaluate --store {audit.store.url} --metrics "
            "sanity (or metrics: [all] in the spec)."
        )
    panels = []
    for metric in SANITY:
        group = [t for t in chosen if t.metric == metric]
        lines = {m: np.array([t.mean(m) for t in group]) for m in methods}
        panels.append((metric.removeprefix("sanity_"), [t.label for t in group], lines))
    path = figures.curves(panels, out / "sanity.png", "similarity to the original map")
    _, layers, lines = panels[-1]  # Spearman of |maps|, as a table
    rows = [[_esc(m), *[fmt(v) for v in values]] for m, values in lines.items()]
    return (
        _figure(path, root, "sanity check: similarity against randomised layer")
        + "<p class='note'>Layers randomised cascading from the top (Adebayo et al.); a map "
        "that stays similar as the model is destroyed does not explain the model. The table: "
        "Spearman of |maps|.</p>" + _table(["method", *layers], rows, "matrix")
    )


def _decoy_section(audit: Audit, out: Path, root: Path) -> str | Missing:
    metrics = audit.group("metrics")
    found = [
        v
        for v in (metrics.data_vars if metrics is not None else [])
        if str(v).startswith("decoy_validity_")
    ]
    if not found:
        return Missing(
            "No decoy populations scored: "
            + NEXT_STAGE["decoys"].format(url=audit.store.url)
            + " keeps them (keep_decoys: true in a spec), then salaudit evaluate."
        )
    rows, panels = [], {}
    for var in found:
        g = str(var).removeprefix("decoy_validity_")
        v = metrics[var].values.astype(float)
        per_sample = np.nanmean(v, axis=1)
        s = summary(per_sample)
        layer = audit.store.root("r")[f"decoys/{g}/population"].attrs.get("layer", "?")
        rows.append(
            [
                _esc(g),
                _esc(layer),
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
"""


def report_location(store_url: str) -> str:
    """Where a store's report goes by default: beside the store, `<store>-report`."""
    url = store_url.rstrip("/")
    if is_remote(url) and "/" not in url.split("://", 1)[1]:
        raise SalauditError(
            f"store {url} is a bucket's root, so nothing lies beside it: give the report a "
            "place (salaudit report --out s3://BUCKET/PREFIX, or report: in the spec)"
        )
    return f"{url}-report"


def render(store: Store, out: Path) -> Report:
    """Write index.html, figures/*.png and the CSV tables of `store` into the folder `out`."""
    audit = Audit(store)
    if audit.group("inputs") is None:  # every section below may read the inputs
        raise SalauditError(
            f"store {store.url} holds no inputs yet; run salaudit audit (or salaudit explain) "
            "into it first"
        )
    figs = out / "figures"
    metrics = audit.group("metrics")
    tables = metric_tables(metrics) if metrics is not None else []
    methods = audit.methods
    head = headline(tables, methods)
    body = {
        "run": _run_section(audit),
        "headline": _headline_section(head),
        "metrics": _metric_sections(tables, figs, out)
        if tables
        else Missing(f"No metrics in this store: salaudit evaluate --store {store.url}"),
        "maps": _maps_section(audit, figs, out),
        "robustness": _robustness_section(audit, tables, figs, out),
        "localisation": _localisation_section(audit, tables, methods),
        "sanity": _sanity_section(audit, tables, methods, figs, out),
        "decoys": _decoy_section(audit, figs, out),
    }
    missing = {k: c.why for k, c in body.items() if isinstance(c, Missing)}
    body = {k: _missing(c.why) if isinstance(c, Missing) else c for k, c in body.items()}
    nav = "".join(f'<a href="#{k}">{_esc(t)}</a>' for k, t in SECTIONS.items())
    sections = "".join(
        f'<section id="{k}"><h2>{_esc(SECTIONS[k])}</h2>{content}</section>'
        for k, content in body.items()
    )
    title = f"salaudit report: {audit.attrs.get('model', '?')} on {audit.attrs.get('data', '?')}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}'
        f"</title><style>{CSS}</style></head><body><header><h1>{_esc(title)}</h1>"
        f"<p class='note'>{_esc(store.url)} · {len(methods)} methods · written {stamp} by "
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
    out = out or report_location(url)
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"no salaudit store at {url}; run salaudit audit into it first")
    if not is_remote(out):
        target = Path(out)
        if target.exists():
            shutil.rmtree(target / "figures", ignore_errors=True)
        return render(store, target)
    from .io import filesystem

    fs, path = filesystem(out, storage_options)
    with tempfile.TemporaryDirectory(prefix="salaudit-report-") as scratch:
        report = render(store, Path(scratch))
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.put(f"{scratch}/", path, recursive=True)
    report.location = f"{out.rstrip('/')}/index.html"
    return report
