"""The report's figures: matplotlib in one colour-blind-safe style, saved as PNG files.

Categorical colours come from matplotlib's `tableau-colorblind10`; maps use `inferno`
(sequential, readable without colour vision) and differences `RdBu_r` (diverging, red-blue
stays apart for the common colour-vision deficiencies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STYLE = "tableau-colorblind10"
RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
}
MAP_CMAP, DIFF_CMAP, MATRIX_CMAP = "inferno", "RdBu_r", "cividis"


@contextlib.contextmanager
def style() -> Iterator[object]:
    """pyplot (headless) in the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context(STYLE), plt.rc_context(RC):
        yield plt


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def box_plots(
    panels: list[tuple[str, dict[str, np.ndarray]]], path: Path, log: bool = False
) -> Path:
    """One panel per (title, {label: values}): a box per label (NaNs dropped, the points
    drawn over the box)."""
    with style() as plt:
        width = max(3.0, 0.45 * max(len(v) for _, v in panels) + 1.0)
        fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 2.6), squeeze=False)
        for ax, (title, groups) in zip(axes[0], panels, strict=True):
            labels = list(groups)
            data = [np.asarray(groups[k], float) for k in labels]
            data = [d[~np.isnan(d)] for d in data]
            ax.boxplot(data, showfliers=False, widths=0.6)
            rng = np.random.default_rng(0)
            for i, d in enumerate(data, start=1):
                ax.plot(i + rng.uniform(-0.15, 0.15, d.size), d, ".", ms=3, alpha=0.6)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=40, ha="right")
            ax.set_title(title)
            if log:
                ax.set_yscale("log")
        return _save(plt, fig, path)


def matrices(panels: list[tuple[str, list[str], list[str], np.ndarray]], path: Path) -> Path:
    """Annotated heat maps, one per (title, row labels, column labels, values)."""
    with style() as plt:
        widths = [max(1.6, 0.75 * len(cols) + 1.2) for _, _, cols, _ in panels]
        rows = max(len(r) for _, r, _, _ in panels)
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(sum(widths), 0.32 * rows + 1.2),
            squeeze=False,
            gridspec_kw={"width_ratios": widths},
        )
        for ax, (title, row_labels, col_labels, values) in zip(axes[0], panels, strict=True):
            v = np.asarray(values, float)
            finite = v[np.isfinite(v)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            ax.imshow(v, cmap=MATRIX_CMAP, vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
            for (i, j), value in np.ndenumerate(v):
                if np.isfinite(value):
                    dark = hi > lo and (value - lo) / (hi - lo) < 0.55
                    ax.text(
                        j,
                        i,
                        f"{value:.2g}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if dark else "black",
                    )
            ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right")
            same_rows = ax is not axes[0, 0] and row_labels == panels[0][1]
            ax.set_yticks(range(len(row_labels)), [] if same_rows else row_labels)
            ax.set_title(title)
        return _save(plt, fig, path)


def curves(
    panels: list[tuple[str, list[str], dict[str, np.ndarray]]], path: Path, ylabel: str
) -> Path:
    """Line plots, one per (title, x labels, {label: y values}), with a shared legend."""
    with style() as plt:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
        for ax, (title, xs, lines) in zip(axes[0], panels, strict=True):
            for label, ys in lines.items():
                ax.plot(range(len(xs)), ys, marker="o", ms=3, label=label)
            ax.set_xticks(range(len(xs)), xs, rotation=40, ha="right")
            ax.set_title(title)
            ax.set_ylabel(ylabel)
        axes[0, -1].legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
        return _save(plt, fig, path)


def feature_bars(
    features: list[str], panels: list[tuple[str, np.ndarray]], path: Path, title: str
) -> Path:
    """Horizontal bars over a table's features, one panel per (title, values): the input's
    values first, then each method's saliency scaled to max |value| 1 (red positive, blue
    negative, as the report's difference maps)."""
    with style() as plt:
        cmap = plt.get_cmap(DIFF_CMAP)
        height = 0.14 * len(features) + 0.9
        fig, axes = plt.subplots(
            1, len(panels), figsize=(1.45 * len(panels) + 1.6, height), sharey=True, squeeze=False
        )
        ys = np.arange(len(features))
        for i, (ax, (name, values)) in enumerate(zip(axes[0], panels, strict=True)):
            v = np.asarray(values, float)
            if i:
                top = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 0.0
                v = v / top if top > 0 else v
                colours = [cmap(0.85) if x >= 0 else cmap(0.15) for x in np.nan_to_num(v)]
                ax.set_xlim(-1.05, 1.05)
            else:
                colours = ["0.55"] * len(v)
                ax.set_xlim(0, 1)
            ax.barh(ys, np.nan_to_num(v), color=colours, height=0.8)
            ax.axvline(0, color="0.3", lw=0.5)
            ax.set_title(name, fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
        axes[0, 0].set_yticks(ys, features, fontsize=6)
        axes[0, 0].invert_yaxis()
        fig.suptitle(title, fontsize=8)
        return _save(plt, fig, path)
