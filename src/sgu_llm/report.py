"""The run report: `report.md` and a self-contained `report.html` with plots drawn by matplotlib (inline SVG).

Both files are rendered from one list of blocks built from the run's data: headings, paragraphs, tables
(every cell formatted once, so the two files show the same numbers) and plots (HTML only).
"""

from __future__ import annotations

import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HEADLINE = (
    "forget_quality",
    "model_utility",
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "forget_tr_mean",
    "forget_outrank",
    "retain_prob",
    "retain_rouge",
    "privleak",
)
MODELS = ("target", "retain", "noise_floor", "unlearned")
ACTIONS = ("sgu/maintain_frac", "sgu/prune_frac", "sgu/reverse_frac", "sgu/conflict_frac")
STATES = ("maintained", "pruned", "reversed", "collateral")  # as sgu_llm.probe.stats (which needs torch)
PAGE_STYLE = "body{font-family:sans-serif;max-width:1100px;margin:0 auto;padding:0 1em}"
TABLE_ATTRS = "border='1' cellpadding='4' style='border-collapse:collapse;margin:8px 0'"

Block = tuple[str, Any]  # (kind, content): h1, h2, p (lines), table (header, rows), plot (title, Figure), md


def _fmt(v: Any) -> str:
    """Numbers to 3 significant digits, None as a dash."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return "–" if v is None else str(v)


# Plots: matplotlib Figure objects (never pyplot's global state), saved as SVG when the page is rendered.


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


def svg(fig: Figure, salt: str) -> str:
    """The figure as an inline <svg> element as wide as the page (no XML prolog; ids derived from `salt`)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :].replace("<svg ", '<svg style="width:100%;height:auto" ', 1)


# Blocks -> markdown and HTML


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return f"<table {TABLE_ATTRS}>" + row(header, "th") + "".join(row(r, "td") for r in rows) + "</table>"


def _plot_html(title: str, fig: Figure) -> str:
    return f"<h3>{html.escape(title)}</h3>\n<div>{svg(fig, title)}</div>"


MARKDOWN = {
    "h1": lambda text: f"# {text}",
    "h2": lambda text: f"## {text}",
    "h3": lambda text: f"### {text}",
    "p": "\n".join,
    "table": lambda table: _md_table(*table),
    "md": str,  # markdown only
}
HTML = {
    "h1": lambda text: f"<h1>{html.escape(text)}</h1>",
    "h2": lambda text: f"<h2>{html.escape(text)}</h2>",
    "h3": lambda text: f"<h3>{html.escape(text)}</h3>",
    "p": lambda lines: "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>",
    "table": lambda table: _html_table(*table),
    "plot": lambda plot: _plot_html(*plot),
}


def _p(*lines: str) -> Block:
    return "p", list(lines)


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(MARKDOWN[kind](content) for kind, content in blocks if kind in MARKDOWN) + "\n"


def to_html(blocks: list[Block]) -> str:
    return "\n".join(HTML[kind](content) for kind, content in blocks if kind in HTML)


# The run report


def _models(evals: dict[str, dict]) -> list[str]:
    return [n for n in MODELS if n in evals]


def _headline_table(evals: dict[str, dict]) -> Block:
    names = _models(evals)
    rows = [[key] + [_fmt(evals[n]["aggregates"].get(key)) for n in names] for key in HEADLINE]
    return "table", (["metric", *names], rows)


def _known_line(known: dict[str, Any] | None) -> list[Block]:
    """'World facts stated' line: how much general knowledge each model keeps (greedy answers)."""
    if not known or len(known) < 2:
        return []
    names = [n for n in ("base", *MODELS) if n in known]
    cells = ", ".join(f"{n} {known[n]}" for n in names)
    return [_p(f"World facts stated in the greedy answer (of {known['of']}): {cells}.")]


def _attack_blocks(attacks: dict[str, Any] | None) -> list[Block]:
    if not attacks:
        return []
    from sgu_llm.attacks import attack_table

    rows = [
        [name, attack, f"{m['forget_prob']:.4f}", f"{m['forget_rouge']:.4f}", f"{m['forget_quality']:.3g}"]
        for name, entry in attacks["models"].items()
        for attack, m in entry.items()
    ]
    blocks = [
        ("h2", "Attacks: does the forgotten come back?"),
        _p(attack_table(attacks)[0]),
        ("table", (["model", "attack", "forget prob", "forget ROUGE", "forget quality"], rows)),
    ]
    sweep = attacks.get("sweep")
    if sweep:
        from sgu_llm.sweep import ATTACK_HEADERS, attack_caption, attack_cells

        blocks.append(("h3", f"Every method of the sweep ({sweep['source']})"))
        if sweep["rows"]:
            seeds = len(sweep["rows"][0]["attacks"]["seeds"])
            caption = attack_caption(sweep["rows"][0]["attacks"])
            blocks.append(_p(f"The same attacks, from the sweep's runs over {seeds} model seeds. {caption}"))
            blocks.append(("table", (ATTACK_HEADERS, attack_cells(sweep["rows"], sweep["retain"]))))
        else:
            blocks.append(_p(sweep["note"]))
    return blocks


def _over_steps(records: list[dict], keys: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """Named (steps, values) series from per-step records ("sgu/maintain_frac" is named "maintain frac")."""
    xs = [r["step"] for r in records]
    return {k.split("/")[-1].replace("_", " "): (xs, [r[k] for r in records]) for k in keys}


def run_plots(evals: dict[str, dict], steps: list[dict], log_history: list[dict]) -> dict[str, Figure]:
    """Truth ratios and probabilities of the models; forget quality, probabilities and SGU's actions over the
    unlearning steps where they were recorded."""
    names = _models(evals)
    ratios = {
        n: [r for r in evals[n]["per_example"]["forget"]["truth_ratio"] if math.isfinite(r)] for n in names
    }
    probs = {
        n: ([evals[n]["aggregates"]["forget_prob"]], [evals[n]["aggregates"]["retain_prob"]]) for n in names
    }
    plots = {}
    if any(ratios.values()):
        plots["Forget-set truth ratio distributions"] = histogram_figure(ratios, "truth ratio")
        boxed = {n: v for n, v in ratios.items() if v and min(v) > 0}
        if boxed:
            plots["Undershoot or overshoot: forget truth ratios against the retain model's"] = truth_ratio_figure(boxed)
    plots["Forget vs retain probability"] = scatter_figure(probs, "forget probability", "retain probability")
    if steps:
        fq = _over_steps(steps, ("forget_quality",))
        plots["Forget quality over unlearning"] = line_figure(fq, "optimizer step", "forget quality")
        values = _over_steps(steps, ("forget_prob", "retain_prob", "forget_truth_ratio"))
        plots["Probabilities over unlearning"] = line_figure(values, "optimizer step", "value")
    acts = [h for h in log_history if ACTIONS[0] in h]
    if acts:
        fractions = _over_steps(acts, ACTIONS)
        plots["SGU action fractions over steps"] = line_figure(
            fractions, "optimizer step", "fraction of coordinates"
        )
    return plots


def build_report(
    metrics: dict[str, Any],
    evals: dict[str, dict],
    steps: list[dict],
    log_history: list[dict],
    probe: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Markdown and HTML reports from a run's metrics, the four models' evals and the per-step records."""
    blocks: list[Block] = [
        ("h1", f"sgu-llm run: {metrics['method']}"),
        _p(
            f"Forget quality {_fmt(metrics['forget_quality'])} "
            f"(noise floor: {_fmt(metrics['noise_floor_forget_quality'])}), "
            f"model utility {_fmt(metrics['model_utility'])} (target: {_fmt(metrics['target']['model_utility'])})."
        ),
        _p(
            "The noise floor is a second retain model trained with another seed: a forget quality at or above "
            "it is as indistinguishable from the retain model as retraining gets."
        ),
        _headline_table(evals),
        *_known_line(metrics.get("world_facts_known")),
        *_attack_blocks(metrics.get("attacks")),
        _p("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items())),
        *(("plot", plot) for plot in run_plots(evals, steps, log_history).items()),
        ("md", "Plots are in report.html."),
        *(_probe_blocks(probe) if probe else []),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>sgu-llm report</title>"
        f"<style>{PAGE_STYLE}</style></head><body>\n{to_html(blocks)}\n</body></html>"
    )
    return to_markdown(blocks), page


# The SAE probe section


def _probe_summary(probe: dict[str, Any]) -> Block:
    q = probe["sae_quality"]
    counts = probe["state_counts"]
    final = counts[-1] if counts else {}
    if probe["probe_share"] == probe["probe_share"]:  # nan for a static before/after probe
        cost = (
            f"Probe cost: {probe['probe_seconds']:.1f} s, {100 * probe['probe_share']:.1f} % of the unlearning time "
            f"without it ({probe['unlearn_seconds_without_probe']:.1f} s of training steps, per-epoch evaluation "
            "excluded)."
        )
    else:
        cost = f"Probe cost: {probe['probe_seconds']:.1f} s (before/after probe, no unlearning run)."
    return _p(
        f"SAE on `{probe['hook_name']}` ({probe['hf_module']}): explained variance {q['explained_variance']:.3f}, "
        f"L0 {q['l0']:.1f}, dead features {q['dead_fraction']:.3f} of {q['d_sae']}.",
        f"{len(probe['selected'])} forget-specific features; at the end: "
        + ", ".join(f"{s} {final.get(s, 0)}" for s in STATES)
        + ".",
        cost,
    )


def _causal_blocks(probe: dict[str, Any]) -> list[Block]:
    causal = probe.get("causal") or {}
    if not causal.get("n_features"):
        return [
            _p("Causal check: the probe called no feature pruned or reversed and no feature's forget activation "
               "fell, so there was nothing to clamp.")
        ]
    largest_drop = causal.get("clamped_from") == "largest_drop"
    which = (
        "whose forget activation fell most during unlearning (the probe called none pruned or reversed)"
        if largest_drop
        else "unlearning switched off (pruned or reversed)"
    )
    clamped_label = "largest drop" if largest_drop else "removed"
    header = [
        "factor",
        "features",
        "forget prob drop",
        "retain prob drop",
        "forget NLL rise",
        "retain NLL rise",
        "selectivity",
        "random selectivity: std, min-max",
        "random >= clamped",
    ]
    effects = ("forget_drop", "retain_drop", "forget_nll_rise", "retain_nll_rise", "selectivity")
    rows = []
    for scale, entry in causal.get("by_scale", {}).items():
        spread = (
            f"{entry['random_selectivity_std']:.3g}, {entry['random_selectivity_min']:.3g} to "
            f"{entry['random_selectivity_max']:.3g}"
        )
        for label, eff, spread_cell, p_cell in (
            (clamped_label, entry["clamped_effects"], "", f"{entry['random_at_least']:.2f}"),
            ("matched random (mean)", entry["random_mean"], spread, ""),
        ):
            rows.append(
                [f"{float(scale):g}", label, *(f"{eff[k]:.4g}" for k in effects), spread_cell, p_cell]
            )
    return [
        _p(
            f"Causal check on the target model, clamping the {causal['n_features']} features {which} through the SAE "
            f"(reconstruction + error term) against {probe['causal_random_draws']} draws of as many random "
            "features of matched firing frequency. Each clamp multiplies the features by a factor (0: off; "
            'negative: pushed past zero). Selectivity = forget NLL rise - retain NLL rise; "random >= clamped" '
            "is the fraction of random draws at least as selective (an empirical p-value)."
        ),
        _p(
            f"Unclamped target: forget prob {causal['baseline']['forget_prob']:.4f}, "
            f"retain prob {causal['baseline']['retain_prob']:.4f}."
        ),
        ("table", (header, rows)),
    ]


def _top_features(probe: dict[str, Any]) -> list[Block]:
    """The first ten features unlearning switched off, with their activations and top forget contexts."""
    top = [f for f in probe["features"] if f["state"] in ("pruned", "reversed")][:10]
    if not top:
        return []
    header = ["feature", "state", "forget act start -> end", "retain act start -> end", "top forget contexts"]
    rows = [
        [
            str(f["feature"]),
            f["state"],
            f"{f['steps'][0]['forget_mean_act']:.3f} -> {f['steps'][-1]['forget_mean_act']:.3f}",
            f"{f['steps'][0]['retain_mean_act']:.3f} -> {f['steps'][-1]['retain_mean_act']:.3f}",
            " / ".join(f.get("contexts", [])),
        ]
        for f in top
    ]
    return [("table", (header, rows))]


def probe_plots(probe: dict[str, Any]) -> dict[str, Figure]:
    """Feature states over steps, forget vs retain activation, SGU's maintain fractions."""
    plots = {}
    if probe["state_counts"]:
        states = _over_steps(probe["state_counts"], STATES)
        plots["Forget-specific feature states over steps"] = line_figure(states, "optimizer step", "features")
    feats = probe["features"]
    if feats:
        acts = {
            when: (
                [f["steps"][i]["forget_mean_act"] for f in feats],
                [f["steps"][i]["retain_mean_act"] for f in feats],
            )
            for when, i in (("before", 0), ("after", -1))
        }
        plots["Selected features: forget vs retain mean activation"] = scatter_figure(
            acts, "forget mean activation", "retain mean activation"
        )
    actions = probe.get("actions") or []
    if actions:
        names = sorted({n for a in actions for n in a["tensors"]})
        grid = [[a["tensors"].get(n, [0, 0, 0])[1] for a in actions] for n in names]
        plots["Maintain fraction per parameter tensor feeding the probed layer x step"] = heatmap_figure(
            names, [a["step"] for a in actions], grid, "maintain fraction"
        )
    return plots


def _probe_blocks(probe: dict[str, Any]) -> list[Block]:
    return [
        ("h2", "SAE probe"),
        _probe_summary(probe),
        *_causal_blocks(probe),
        *_top_features(probe),
        *(("plot", plot) for plot in probe_plots(probe).items()),
    ]


def build_probe_section(probe: dict[str, Any]) -> tuple[str, str]:
    """Markdown and HTML for the SAE probe: quality, states over steps, scatter, top features, heatmap, causal table."""
    blocks = _probe_blocks(probe)
    return to_markdown(blocks), to_html(blocks)
