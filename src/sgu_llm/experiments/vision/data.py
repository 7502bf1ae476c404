"""The vision benchmark's data, model and measurements: scikit-learn's 8x8 digits, a small CNN, a model trained
from scratch, and the image-unlearning metrics (UA, RA, TA, loss-based MIA, the gap to the retrained model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


