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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
METRICS = ("UA", "RA", "TA", "MIA")
SETTINGS = ("class", "random")


class DigitsCNN(torch.nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers: ~38k parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = torch.nn.Linear(64, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(pixel_values))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(test_fraction: float = 0.2) -> Digits:
    """The 1,797 digits scaled to [0, 1], one fixed stratified train/test split (the same for every seed)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("the vision benchmark needs scikit-learn: pip install 'sgu-llm[vision]'") from err
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=d.target, random_state=0)
    return Digits(x[tr], y[tr], x[te], y[te])


def forget_mask(data: Digits, setting: str, seed: int, forget_class: int, fraction: float) -> torch.Tensor:
    """Boolean mask over the training images: the forgotten class, or a seeded random `fraction`."""
    if setting == "class":
        return data.y_train == forget_class
    if setting == "random":
        gen = torch.Generator().manual_seed(10_007 + seed)
        idx = torch.randperm(len(data.y_train), generator=gen)[: round(fraction * len(data.y_train))]
        mask = torch.zeros(len(data.y_train), dtype=torch.bool)
        mask[idx] = True
        return mask
    raise ValueError(f"unknown forget setting {setting!r}; choose one of {list(SETTINGS)}")


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 20, lr: float = 2e-3
) -> DigitsCNN:
    """A plain supervised training loop (Adam, batch 32): the original and the retrained models."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def losses_and_hits(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    logits = model.eval()(x)
    return F.cross_entropy(logits, y, reduction="none").numpy(), (logits.argmax(-1) == y).numpy()


def mia_efficacy(member: np.ndarray, nonmember: np.ndarray, forget: np.ndarray, seed: int = 0) -> float:
    """Share of forget images a loss-based membership classifier calls non-members (higher = more forgotten).

    A logistic regression on log-loss, fitted on as many members (retain images) as non-members (test images).
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = min(len(member), len(nonmember))
    member = rng.choice(member, n, replace=False)
    nonmember = rng.choice(nonmember, n, replace=False)
    feat = lambda v: np.log(np.clip(v, 1e-12, None)).reshape(-1, 1)  # noqa: E731
    clf = LogisticRegression().fit(feat(np.concatenate([member, nonmember])), np.r_[np.ones(n), np.zeros(n)])
    return float((clf.predict(feat(forget)) == 0).mean())


def measure(
    model: torch.nn.Module, data: Digits, mask: torch.Tensor, setting: str, forget_class: int
) -> dict:
    """UA, RA, TA and MIA (in percent) of a model for one forget set."""
    if setting == "class":
        keep = data.y_test != forget_class
        x_test, y_test = data.x_test[keep], data.y_test[keep]
    else:
        x_test, y_test = data.x_test, data.y_test
    f_loss, f_hit = losses_and_hits(model, data.x_train[mask], data.y_train[mask])
    r_loss, r_hit = losses_and_hits(model, data.x_train[~mask], data.y_train[~mask])
    t_loss, t_hit = losses_and_hits(model, x_test, y_test)
    return {
        "UA": 100 * (1 - f_hit.mean()),
        "RA": 100 * r_hit.mean(),
        "TA": 100 * t_hit.mean(),
        "MIA": 100 * mia_efficacy(r_loss, t_loss, f_loss),
    }


def avg_gap(m: dict, gold: dict) -> float:
    return float(np.mean([abs(m[k] - gold[k]) for k in METRICS]))


def rows_of(x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    return [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]


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
    import copy

    from sgu_llm.trainers import get_method

    name, fields = METHODS[method]
    config_cls, trainer_cls = get_method(name)
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
    trainer = trainer_cls(
        copy.deepcopy(model).train(),
        config,
        forget_dataset=rows_of(data.x_train[mask], data.y_train[mask]),
        retain_dataset=rows_of(data.x_train[~mask], data.y_train[~mask]),
        processing_class=None,
        task="classification",
    )
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model).eval()


def run_benchmark(
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
    import transformers

    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 38k-parameter CNN: one thread is several times faster than two fighting
    try:
        return _run(
            seeds, methods, learning_rates, settings, forget_class, random_fraction, epochs, batch_size, log
        )
    finally:
        torch.set_num_threads(threads)


def _run(seeds, methods, learning_rates, settings, forget_class, random_fraction, epochs, batch_size, log):
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


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def summarize(
    per_seed: list[dict], methods: tuple[str, ...], learning_rates: tuple[float, ...]
) -> dict[str, Any]:
    """Per model: each metric's mean and range over seeds and the gap to the retrained model of the same seed;
    per method, the learning rate with the lowest mean gap."""

    def stats(key: str | None, run: str | None = None) -> dict[str, Any]:
        ms = [rec[key] if run is None else rec["runs"][run] for rec in per_seed]
        row = {k: _spread([m[k] for m in ms]) for k in METRICS}
        row["gap"] = _spread([avg_gap(m, rec["retrained"]) for m, rec in zip(ms, per_seed)])
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
    from sgu_llm.files import write_text

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


def main(argv: list[str] | None = None) -> int:
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
    try:
        result = run_benchmark(
            seeds=tuple(a.seeds),
            methods=tuple(a.methods),
            learning_rates=tuple(a.learning_rates),
            settings=tuple(a.settings),
            forget_class=a.forget_class,
            epochs=a.epochs,
            log=lambda s: print(s, file=sys.stderr),
        )
    except ValueError as err:
        print(f"sgu-llm vision: error: {err}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(table)
    if a.output:
        write_into(a.output, table)
    if a.json:
        from sgu_llm.files import write_json

        write_json(a.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
