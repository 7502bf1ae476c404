"""Plots as matplotlib Figure objects (never pyplot's global state): the run report's and the sweep's."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def use_log_scale(values: list[float]) -> bool:
    """A log axis for positive values spanning more than two orders of magnitude (e.g. forget quality)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return len(finite) > 1 and min(finite) > 0 and max(finite) / min(finite) > 100


def _figure(height: float = 3.4) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height))
    return fig, fig.add_subplot()


def _finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, steps: bool = False) -> Figure:
    """Labels, a light grid, whole-number ticks on a step axis, and the legend above the plot, off the data."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if steps:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))
    labels = ax.get_legend_handles_labels()[1]
    if len(labels) > 1:
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=min(4, len(labels)), frameon=False)
    return fig


def line_figure(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str) -> Figure:
    """Named (x, y) series over optimizer steps; a log y axis where the values span orders of magnitude."""
    fig, ax = _figure()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) <= 20 else None, markersize=4, label=name)
    if use_log_scale([y for _, ys in series.values() for y in ys]):
        ax.set_yscale("log")
    return _finish(fig, ax, xlabel, ylabel, steps=True)


def scatter_figure(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str) -> Figure:
    fig, ax = _figure()
    for name, (xs, ys) in series.items():
        ax.scatter(xs, ys, s=40, alpha=0.8, edgecolors="white", label=name)
    ax.margins(0.08)  # no point on an axis
    return _finish(fig, ax, xlabel, ylabel)


def histogram_figure(samples: dict[str, list[float]], xlabel: str) -> Figure:
    """Step histograms on shared bins, as fractions of each sample; log bins where values span decades."""
    values = [v for vs in samples.values() for v in vs]
    log = use_log_scale(values)
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi, 31)
    fig, ax = _figure()
    for name, vs in samples.items():
        weights = np.full(len(vs), 1 / max(1, len(vs)))
        ax.hist(vs, bins=edges, weights=weights, histtype="step", linewidth=2, label=name)
    if log:
        ax.set_xscale("log")
    return _finish(fig, ax, xlabel, "fraction of examples")


def truth_ratio_figure(ratios: dict[str, list[float]], reference: str = "retain") -> Figure:
    """Undershoot or overshoot at a glance: one box of forget truth ratios R = P_wrong / P_correct per model
    (log axis), the reference model's middle half shaded. Left of it the model still prefers the true
    answers (undershoot); right of it, the wrong ones (overshoot)."""
    fig, ax = _figure(height=1.0 + 0.45 * len(ratios))
    names = list(ratios)
    ax.boxplot([ratios[n] for n in names], vert=False, whis=(5, 95), showfliers=False, widths=0.5)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")
    if ratios.get(reference):
        lo, mid, hi = np.percentile(ratios[reference], [25, 50, 75])
        ax.axvspan(lo, hi, color="tab:green", alpha=0.15, label=f"{reference}: middle half")
        ax.axvline(mid, color="tab:green", lw=1)
    ax.invert_yaxis()
    ax.set_title("<- still prefers the true answer (undershoot)      prefers the wrong ones (overshoot) ->", fontsize=8)
    return _finish(fig, ax, "forget truth ratio R (boxes: quartiles, whiskers 5-95 %)", "")


def heatmap_figure(rows: list[str], steps: list[int], values: list[list[float]], label: str) -> Figure:
    """Rows x steps grid coloured by a value in [0, 1]."""
    fig, ax = _figure(height=1.2 + 0.25 * len(rows))
    mesh = ax.pcolormesh(
        steps, range(len(rows)), values, shading="nearest", cmap="Blues", vmin=0, vmax=1, rasterized=True
    )
    ax.set_yticks(range(len(rows)), [name[-58:] for name in rows], fontsize=8)
    ax.invert_yaxis()
    fig.colorbar(mesh, ax=ax, label=label, pad=0.01)
    _finish(fig, ax, "optimizer step", "", steps=True)
    ax.grid(False)
    return fig



def plot_pareto(rows: list[dict], baselines: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 5), squeeze=False)
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    for ax, split in zip(axes[0], splits):
        pts = [r for r in rows if r["split"] == split and r["selection"] == "holdout"]
        for r in pts:
            ax.scatter(
                r["model_utility_mean"],
                max(r["forget_quality_mean"], 1e-30),
                color=colours[r["method"]],
                marker="o" if r["reported"] else ".",
                s=60 if r["reported"] else 25,
                label=r["method"] if r["reported"] else None,
            )
        base = baselines.get(split, {})
        if base:
            t_mu = np.mean([b["target"]["aggregates"]["model_utility"] for b in base.values()])
            nf = np.mean([b["noise_floor"]["aggregates"]["forget_quality"] for b in base.values()])
            ax.axvline(t_mu, color="grey", ls="--", lw=1, label="target utility")
            ax.axvline(0.95 * t_mu, color="grey", ls=":", lw=1, label="0.95 x target")
            ax.axhline(nf, color="black", ls="--", lw=1, label="noise floor (mean)")
        ax.set_yscale("log")
        ax.set_xlabel("model utility (mean over seeds)")
        ax.set_ylabel("forget quality (mean over seeds, log)")
        ax.set_title(f"{split}: holdout-selected epoch; large = reported lr")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
