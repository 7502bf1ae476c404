"""SGU on an image classifier: does the method carry from language to images?

    sgu-llm vision --output docs/vision.md

scikit-learn's 8x8 digits (1,797 images, shipped with the package), a small CNN, and
two forget settings: one whole class, and a random 10 % of the training images. The
gold standard is a model retrained from scratch without the forget set. Every method
runs through the same trainers as the language benchmark (`task="classification"`:
only the loss and the model differ) over the same learning-rate grid, and each reports
the rate with the lowest mean gap to the retrained model (the same rule for all).

Metrics, as in the image-unlearning literature (Jia et al. 2023, SalUn), in percent:
UA (unlearning accuracy, 1 - accuracy on the forget set), RA (accuracy on the retain
set), TA (test accuracy; for class forgetting on the test images of the kept classes),
MIA (loss-based membership inference: a logistic regression on the per-example loss,
fitted on retain images as members and test images as non-members, and the share of
forget images it calls non-members), and the average gap to the retrained model's four
numbers (lower is better).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import torch
import transformers

from sgu_llm.core.files import write_json, write_text
from sgu_llm.core.formatting import spread
from sgu_llm.experiments.shared import make_trainer
from sgu_llm.experiments.vision.data import (
    METRICS,
    SETTINGS,
    Digits,
    DigitsCNN,
    avg_gap,
    forget_mask,
    load_digits_split,
    measure,
    rows_of,
    train_classifier,
)
from sgu_llm.trainers import get_method

# name -> (registered method, config fields). The selective functions are the language benchmark's.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "retain_only": ("sgu", {"selective_function": "retain_only"}),
    "gradascent": ("gradascent", {}),
    "graddiff": ("graddiff", {}),
    "npo": ("npo", {}),
    "sign_conflict": ("sgu", {"selective_function": "sign_conflict"}),
    "sgu": ("sgu", {"selective_function": "sgu"}),
    "sgu_reverse": ("sgu", {"selective_function": "sgu_reverse", "forget_loss": "npo"}),
    "gru": ("sgu", {"selective_function": "gru", "forget_loss": "npo"}),
}
SGU_FAMILY = ("sign_conflict", "sgu", "sgu_reverse", "gru")


def unlearn(
    model: torch.nn.Module,
    method: str,
    data: Digits,
    mask: torch.Tensor,
    lr: float,
    seed: int,
    epochs: int,
    batch_size: int,
    workdir: str,
) -> torch.nn.Module:
    """One unlearning run through the registered trainer of `method`, with the classification task."""
    name, fields = METHODS[method]
    config_cls, _ = get_method(name)
    config = config_cls(
        output_dir=os.path.join(workdir, f"{method}-{seed}"),
        overwrite_output_dir=True,
        learning_rate=lr,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=seed,
        **fields,
    )
    sets = {"forget": rows_of(data.x_train[mask], data.y_train[mask]), "retain": rows_of(data.x_train[~mask], data.y_train[~mask])}
    trainer = make_trainer(name, model.train(), config, sets, None, task="classification")
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model).eval()


def vision_benchmark(
    seeds: tuple[int, ...] = (0, 1, 2),
    methods: tuple[str, ...] = tuple(METHODS),
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3),
    settings: tuple[str, ...] = SETTINGS,
    forget_class: int = 0,
    random_fraction: float = 0.1,
    epochs: int = 5,
    batch_size: int = 32,
    log: Any = None,
) -> dict[str, Any]:
    """Every (setting, seed): original and retrained models, then every method at every learning rate."""
    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 38k-parameter CNN: one thread is several times faster than two fighting
    try:
        return all_settings(
            seeds, methods, learning_rates, settings, forget_class, random_fraction, epochs, batch_size, log
        )
    finally:
        torch.set_num_threads(threads)


def all_settings(seeds, methods, learning_rates, settings, forget_class, random_fraction, epochs, batch_size, log):
    """Every setting's per-seed measurements and their summary (`vision_benchmark`'s body)."""
    data = load_digits_split()
    out: dict[str, Any] = {"settings": {}, "seconds": {}}
    originals: dict[int, DigitsCNN] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for setting in settings:
            start = time.perf_counter()
            per_seed = []
            for seed in seeds:
                mask = forget_mask(data, setting, seed, forget_class, random_fraction)
                if seed not in originals:  # trained on every image: the same model for both settings
                    originals[seed] = train_classifier(data.x_train, data.y_train, seed)
                original = originals[seed]
                retrained = train_classifier(data.x_train[~mask], data.y_train[~mask], seed)
                rec = {
                    "original": measure(original, data, mask, setting, forget_class),
                    "retrained": measure(retrained, data, mask, setting, forget_class),
                    "runs": {},
                }
                for method in methods:
                    for lr in learning_rates:
                        model = unlearn(original, method, data, mask, lr, seed, epochs, batch_size, workdir)
                        rec["runs"][f"{method}@{lr:g}"] = measure(model, data, mask, setting, forget_class)
                per_seed.append(rec)
                if log:
                    log(f"[vision] {setting} seed {seed}: {time.perf_counter() - start:.0f} s")
            out["settings"][setting] = summarize(per_seed, methods, learning_rates)
            out["seconds"][setting] = time.perf_counter() - start
    out["config"] = dict(
        seeds=list(seeds),
        learning_rates=list(learning_rates),
        forget_class=forget_class,
        random_fraction=random_fraction,
        epochs=epochs,
        batch_size=batch_size,
        train_images=len(data.y_train),
        test_images=len(data.y_test),
    )
    return out


def summarize(
    per_seed: list[dict], methods: tuple[str, ...], learning_rates: tuple[float, ...]
) -> dict[str, Any]:
    """Per model: each metric's mean and range over seeds and the gap to the retrained model of the same seed;
    per method, the learning rate with the lowest mean gap."""

    def stats(key: str | None, run: str | None = None) -> dict[str, Any]:
        ms = [rec[key] if run is None else rec["runs"][run] for rec in per_seed]
        row = {k: spread([m[k] for m in ms]) for k in METRICS}
        row["gap"] = spread([avg_gap(m, rec["retrained"]) for m, rec in zip(ms, per_seed)])
        return row

    rows = {"retrained": stats("retrained"), "original": stats("original")}
    for method in methods:
        best = min(
            (stats(None, f"{method}@{lr:g}") | {"lr": lr} for lr in learning_rates),
            key=lambda r: r["gap"]["mean"],
        )
        rows[method] = best
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The results tables: mean (min–max) over seeds, in percent; the gap to the retrained model last."""

    def cell(s: dict[str, float]) -> str:
        return f"{s['mean']:.1f} ({s['min']:.1f}–{s['max']:.1f})"

    cfg = result["config"]
    lines = []
    for setting, rows in result["settings"].items():
        title = (
            f"forget class {cfg['forget_class']}"
            if setting == "class"
            else f"forget a random {100 * cfg['random_fraction']:.0f} %"
        )
        lines += [
            f"#### {title} ({len(cfg['seeds'])} seeds, {result['seconds'][setting]:.0f} s)",
            "",
            "| model | lr | UA | RA | TA | MIA | avg gap ↓ |",
            "|---|---|---|---|---|---|---|",
        ]
        order = ["retrained", "original"] + sorted(
            (k for k in rows if k not in ("retrained", "original")), key=lambda k: rows[k]["gap"]["mean"]
        )
        for name in order:
            r = rows[name]
            label = f"**{name}**" if name in SGU_FAMILY else name
            lr = f"{r['lr']:g}" if "lr" in r else "–"
            gap = "–" if name == "retrained" else cell(r["gap"])
            lines.append(f"| {label} | {lr} | " + " | ".join(cell(r[k]) for k in METRICS) + f" | {gap} |")
        lines.append("")
    return "\n".join(lines)


BEGIN, END = "<!-- vision-table:begin -->", "<!-- vision-table:end -->"


def write_into(path: str, table: str) -> None:
    """Replace the text between the table markers of `path` (or create the page with just the table)."""
    block = f"{BEGIN}\n{table}\n{END}"
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# SGU on an image classifier\n\n" + block + "\n"
    write_text(path, text)


def main(argv: list[str]) -> int:
    """`sgu-llm vision` (errors are ValueErrors; `sgu_llm.cli` prints them)."""
    ap = argparse.ArgumentParser(
        prog="sgu-llm vision", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--output", default=None, help="Markdown page to write the tables into (between its markers)."
    )
    ap.add_argument(
        "--json", default=None, help="Also write the full results (every seed's summary) as JSON."
    )
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="Model seeds (initialisation, data order)."
    )
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="Methods to run."
    )
    ap.add_argument(
        "--learning_rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="The shared grid."
    )
    ap.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="Forget settings."
    )
    ap.add_argument("--forget_class", type=int, default=0, help="The class forgotten in the class setting.")
    ap.add_argument("--epochs", type=int, default=5, help="Unlearning epochs (passes over the forget set).")
    a = ap.parse_args(argv)
    result = vision_benchmark(
        seeds=tuple(a.seeds),
        methods=tuple(a.methods),
        learning_rates=tuple(a.learning_rates),
        settings=tuple(a.settings),
        forget_class=a.forget_class,
        epochs=a.epochs,
        log=lambda s: print(s, file=sys.stderr),
    )
    table = markdown(result)
    print(table)
    if a.output:
        write_into(a.output, table)
    if a.json:
        write_json(a.json, result, indent=1)
    return 0

