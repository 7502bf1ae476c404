"""The run report: `report.md` and a self-contained `report.html` with inline SVG plots (no plotting library)."""

from __future__ import annotations

import html
import math
from typing import Any

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
W, H, PAD, LEGEND_W = 620, 300, 48, 120


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def svg_lines(
    series: dict[str, tuple[list[float], list[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    points: bool = False,
) -> str:
    """Line (or scatter, with `points`) plot of named series as an SVG string."""

    def ty(v):
        return math.log10(max(v, 1e-300)) if logy else v

    xs = [x for s in series.values() for x in s[0]]
    ys = [ty(y) for s in series.values() for y in s[1] if y is not None and math.isfinite(ty(y))]
    if not xs or not ys:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    right = W - LEGEND_W  # the legend sits to the right of the plot area, never on the lines
    sx = _scale(min(xs), max(xs), PAD, right)
    lo, hi = min(ys), max(ys)
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    sy = _scale(lo, hi, H - PAD, 24)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
        f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{right}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="24" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<text x="{(PAD + right) / 2}" y="{H - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
        f"{html.escape(ylabel + (' (log10)' if logy else ''))}</text>",
    ]
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(f'<text x="{PAD - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        xv = min(xs) + (max(xs) - min(xs)) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{H - PAD + 14}" text-anchor="middle">{xv:.3g}</text>')
    for k, (name, (sxs, sys_)) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(sx(x), sy(ty(y))) for x, y in zip(sxs, sys_) if y is not None and math.isfinite(ty(y))]
        if points:
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}"/>' for x, y in pts]
        elif pts:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                + '"/>'
            )
        out.append(f'<text x="{right + 10}" y="{30 + 14 * k}" fill="{color}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def histogram(values: list[float], lo: float, hi: float, bins: int = 30) -> tuple[list[float], list[float]]:
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    total = max(1, len(values))
    return [lo + (i + 0.5) * width for i in range(bins)], [c / total for c in counts]


def _fmt(v: Any) -> str:
    """Numbers to 3 significant digits, None as a dash."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return "–" if v is None else str(v)


HEADLINE = (
    "forget_quality",
    "model_utility",
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "retain_prob",
    "retain_rouge",
    "privleak",
)


def _attack_lines(attacks: dict[str, Any] | None) -> list[str]:
    if not attacks:
        return []
    from sgu_llm.attacks import attack_table

    return ["## Attacks: does the forgotten come back?", "", *attack_table(attacks), ""]


def _attack_html(attacks: dict[str, Any] | None) -> str:
    """The attack table as HTML, from the report's data."""
    if not attacks:
        return ""
    from sgu_llm.attacks import attack_table

    intro = attack_table(attacks)[0]
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{attack}</td><td>{m['forget_prob']:.4f}</td>"
        f"<td>{m['forget_rouge']:.4f}</td><td>{m['forget_quality']:.3g}</td></tr>"
        for name, entry in attacks["models"].items()
        for attack, m in entry.items()
    )
    return (
        "<h2>Attacks: does the forgotten come back?</h2>"
        f"<p>{html.escape(intro)}</p>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>model</th><th>attack</th>"
        f"<th>forget prob</th><th>forget ROUGE</th><th>forget quality</th></tr>{cells}</table>"
    )


def _known_line(known: dict[str, Any] | None) -> list[str]:
    """'World facts stated' line: how much general knowledge each model keeps (greedy answers)."""
    if not known or len(known) < 2:
        return []
    names = [n for n in ("base", "target", "retain", "noise_floor", "unlearned") if n in known]
    cells = ", ".join(f"{n} {known[n]}" for n in names)
    return [f"World facts stated in the greedy answer (of {known['of']}): {cells}.", ""]


def build_report(
    metrics: dict[str, Any],
    evals: dict[str, dict],
    steps: list[dict],
    log_history: list[dict],
    probe: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Markdown and HTML reports from a run's metrics, the four models' evals and the per-step records."""
    names = [n for n in ("target", "retain", "noise_floor", "unlearned") if n in evals]
    rows = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in HEADLINE:
        rows.append(f"| {key} | " + " | ".join(_fmt(evals[n]["aggregates"].get(key)) for n in names) + " |")
    table_md = "\n".join(rows)
    md = [
        f"# sgu-llm run: {metrics['method']}",
        "",
        f"Forget quality {_fmt(metrics['forget_quality'])} (noise floor: {_fmt(metrics['noise_floor_forget_quality'])}), "
        f"model utility {_fmt(metrics['model_utility'])} (target: {_fmt(metrics['target']['model_utility'])}).",
        "",
        "The noise floor is a second retain model trained with another seed: a forget quality at or above it is "
        "as indistinguishable from the retain model as retraining gets.",
        "",
        table_md,
        "",
        *_known_line(metrics.get("world_facts_known")),
        *_attack_lines(metrics.get("attacks")),
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items()),
        "",
        "Plots are in report.html.",
    ]
    # Plots
    logs = {
        n: [math.log10(max(r, 1e-12)) for r in evals[n]["per_example"]["forget"]["truth_ratio"]]
        for n in names
    }
    allv = [v for vs in logs.values() for v in vs]
    lo, hi = (min(allv), max(allv)) if allv else (0, 1)
    tr_plot = svg_lines(
        {n: histogram(v, lo, hi) for n, v in logs.items()},
        "Forget-set truth ratio distributions",
        "log10 truth ratio",
        "fraction of examples",
    )
    prob_plot = svg_lines(
        {
            n: ([evals[n]["aggregates"]["forget_prob"]], [evals[n]["aggregates"]["retain_prob"]])
            for n in names
        },
        "Forget vs retain probability",
        "forget probability",
        "retain probability",
        points=True,
    )
    plots = [tr_plot, prob_plot]
    if steps:
        xs = [s["step"] for s in steps]
        plots.append(
            svg_lines(
                {"forget quality": (xs, [s["forget_quality"] for s in steps])},
                "Forget quality over unlearning",
                "optimizer step",
                "forget quality",
                logy=True,
            )
        )
        plots.append(
            svg_lines(
                {
                    k: (xs, [s[k] for s in steps])
                    for k in ("forget_prob", "retain_prob", "forget_truth_ratio")
                },
                "Probabilities over unlearning",
                "optimizer step",
                "value",
            )
        )
    acts = [h for h in log_history if "sgu/maintain_frac" in h]
    if acts:
        xs = [h["step"] for h in acts]
        plots.append(
            svg_lines(
                {
                    k.split("/")[1]: (xs, [h[k] for h in acts])
                    for k in ("sgu/maintain_frac", "sgu/prune_frac", "sgu/reverse_frac", "sgu/conflict_frac")
                },
                "SGU action fractions over steps",
                "optimizer step",
                "fraction of coordinates",
            )
        )
    table_html = (
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>metric</th>"
        + "".join(f"<th>{n}</th>" for n in names)
        + "</tr>"
        + "".join(
            f"<tr><td>{k}</td>"
            + "".join(f"<td>{_fmt(evals[n]['aggregates'].get(k))}</td>" for n in names)
            + "</tr>"
            for k in HEADLINE
        )
        + "</table>"
    )
    body = (
        "\n".join(f"<p>{html.escape(line)}</p>" for line in md[2:5] if line)
        + table_html
        + "".join(f"<p>{html.escape(line)}</p>" for line in _known_line(metrics.get("world_facts_known")) if line)
        + _attack_html(metrics.get("attacks"))
        + "".join(f"<div>{p}</div>" for p in plots)
    )
    probe_md, probe_html = build_probe_section(probe) if probe else ("", "")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sgu-llm report</title></head>"
        f"<body style='font-family:sans-serif;max-width:1100px'><h1>sgu-llm run: {html.escape(metrics['method'])}</h1>"
        f"{body}{probe_html}</body></html>"
    )
    return "\n".join(md) + "\n" + ("\n" + probe_md if probe_md else ""), page


def svg_heatmap(rows: list[str], cols: list[int], values: list[list[float]], title: str) -> str:
    """Rows x columns grid coloured by value in [0, 1] (white -> blue)."""
    if not rows or not cols:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    label_w, cell_h = 330, 14
    cell_w = max(3, min(24, (W + 200 - label_w) // len(cols)))
    height = 40 + cell_h * len(rows)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + cell_w * len(cols) + 20}" height="{height}" '
        'font-family="sans-serif" font-size="10">',
        f'<text x="4" y="14" font-size="13">{html.escape(title)} (white 0, blue 1; hover for values)</text>',
    ]
    for r, name in enumerate(rows):
        y = 28 + r * cell_h
        out.append(f'<text x="{label_w - 4}" y="{y + 10}" text-anchor="end">{html.escape(name[-58:])}</text>')
        for c, v in enumerate(values[r]):
            shade = int(255 * (1 - max(0.0, min(1.0, v))))
            out.append(
                f'<rect x="{label_w + c * cell_w}" y="{y}" width="{cell_w}" height="{cell_h - 1}" '
                f'fill="rgb({shade},{shade},255)"><title>step {cols[c]}: {v:.3f}</title></rect>'
            )
    out.append("</svg>")
    return "\n".join(out)


def build_probe_section(probe: dict[str, Any]) -> tuple[str, str]:
    """Markdown and HTML for the SAE probe: quality, states over steps, scatter, top features, heatmap, causal table."""
    q = probe["sae_quality"]
    counts = probe["state_counts"]
    final = counts[-1] if counts else {}
    causal = probe.get("causal") or {}
    md = [
        "## SAE probe",
        "",
        f"SAE on `{probe['hook_name']}` ({probe['hf_module']}): explained variance {q['explained_variance']:.3f}, "
        f"L0 {q['l0']:.1f}, dead features {q['dead_fraction']:.3f} of {q['d_sae']}.",
        f"{len(probe['selected'])} forget-specific features; at the end: "
        + ", ".join(f"{s} {final.get(s, 0)}" for s in ("maintained", "pruned", "reversed", "collateral"))
        + ".",
        (
            f"Probe cost: {probe['probe_seconds']:.1f} s, {100 * probe['probe_share']:.1f} % of the unlearning time "
            f"without it ({probe['unlearn_seconds_without_probe']:.1f} s of training steps, per-epoch evaluation excluded)."
            if probe["probe_share"] == probe["probe_share"]  # nan for a static before/after probe
            else f"Probe cost: {probe['probe_seconds']:.1f} s (before/after probe, no unlearning run)."
        ),
        "",
    ]
    if causal.get("n_features"):
        md += [
            f"Causal check on the target model, clamping the {causal['n_features']} features unlearning switched off "
            "(pruned or reversed) through the SAE "
            f"(reconstruction + error term) against {probe['causal_random_draws']} draws of as many random features "
            "of matched firing frequency. Each clamp multiplies the features by a factor (0: off; negative: pushed "
            "past zero). Selectivity = forget NLL rise - retain NLL rise; \"random >= clamped\" is the fraction of "
            "random draws at least as selective (an empirical p-value).",
            "",
            f"Unclamped target: forget prob {causal['baseline']['forget_prob']:.4f}, "
            f"retain prob {causal['baseline']['retain_prob']:.4f}.",
            "",
            "| factor | features | forget prob drop | retain prob drop | forget NLL rise | retain NLL rise | "
            "selectivity | random selectivity: std, min-max | random >= clamped |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for scale, entry in causal.get("by_scale", {}).items():
            spread = (
                f"{entry['random_selectivity_std']:.3g}, {entry['random_selectivity_min']:.3g} to "
                f"{entry['random_selectivity_max']:.3g}"
            )
            rows = (
                ("removed", entry["clamped_effects"], "", f"{entry['random_at_least']:.2f}"),
                ("matched random (mean)", entry["random_mean"], spread, ""),
            )
            for label, eff, spread_cell, p_cell in rows:
                md.append(
                    f"| {float(scale):g} | {label} | {eff['forget_drop']:.4g} | {eff['retain_drop']:.4g} | "
                    f"{eff['forget_nll_rise']:.4g} | {eff['retain_nll_rise']:.4g} | {eff['selectivity']:.4g} | "
                    f"{spread_cell} | {p_cell} |"
                )
        md.append("")
    else:
        md += [
            "Causal check: the probe called no feature pruned or reversed, so there was nothing to clamp.",
            "",
        ]
    top = [f for f in probe["features"] if f["state"] in ("pruned", "reversed")][:10]
    if top:
        md += [
            "| feature | state | forget act start -> end | retain act start -> end | top forget contexts |",
            "|---|---|---|---|---|",
        ]
        for f in top:
            s0, s1 = f["steps"][0], f["steps"][-1]
            ctx = " / ".join(f.get("contexts", []))
            md.append(
                f"| {f['feature']} | {f['state']} | {s0['forget_mean_act']:.3f} -> {s1['forget_mean_act']:.3f} | "
                f"{s0['retain_mean_act']:.3f} -> {s1['retain_mean_act']:.3f} | {ctx.replace('|', '/')} |"
            )
        md.append("")
    # HTML
    plots = []
    if counts:
        xs = [c["step"] for c in counts]
        plots.append(
            svg_lines(
                {s: (xs, [c[s] for c in counts]) for s in ("maintained", "pruned", "reversed", "collateral")},
                "Forget-specific feature states over steps",
                "optimizer step",
                "features",
            )
        )
    feats = probe["features"]
    if feats:
        plots.append(
            svg_lines(
                {
                    "before": (
                        [f["steps"][0]["forget_mean_act"] for f in feats],
                        [f["steps"][0]["retain_mean_act"] for f in feats],
                    ),
                    "after": (
                        [f["steps"][-1]["forget_mean_act"] for f in feats],
                        [f["steps"][-1]["retain_mean_act"] for f in feats],
                    ),
                },
                "Selected features: forget vs retain mean activation",
                "forget mean activation",
                "retain mean activation",
                points=True,
            )
        )
    acts = probe.get("actions") or []
    if acts:
        names = sorted({n for a in acts for n in a["tensors"]})
        steps = [a["step"] for a in acts]
        grid = [[a["tensors"].get(n, [0, 0, 0])[1] for a in acts] for n in names]
        plots.append(
            svg_heatmap(
                names, steps, grid, "Maintain fraction per parameter tensor feeding the probed layer x step"
            )
        )
    body = "".join(
        f"<p>{html.escape(line)}</p>"
        for line in md
        if line and not line.startswith("|") and not line.startswith("#")
    )
    tables = [line for line in md if line.startswith("|")]
    table_html = ""
    if tables:
        blocks, cur = [], []
        for line in md:
            if line.startswith("|"):
                cur.append(line)
            elif cur:
                blocks.append(cur)
                cur = []
        if cur:
            blocks.append(cur)
        for block in blocks:
            header = [c.strip() for c in block[0].strip("|").split("|")]
            rows_html = "".join(
                "<tr>"
                + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r.strip("|").split("|"))
                + "</tr>"
                for r in block[2:]
            )
            table_html += (
                "<table border='1' cellpadding='4' style='border-collapse:collapse;margin:8px 0'><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
                + rows_html
                + "</table>"
            )
    page = "<h2>SAE probe</h2>" + body + table_html + "".join(f"<div>{p}</div>" for p in plots)
    return "\n".join(md) + "\n", page
