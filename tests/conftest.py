"""Shared fixtures: a tiny Llama fine-tuned once per session on synthetic TOFU-style data."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models.finetune import finetune
from sgu_llm.models.tiny import tiny_llama, train_tokenizer


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Tests (and the CLIs they start) cache benchmark models in a temporary folder, never in ~/.cache."""
    os.environ["SGU_LLM_CACHE"] = str(tmp_path_factory.mktemp("sgu-llm-cache"))


@pytest.fixture(scope="session")
def splits():
    return synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)


@pytest.fixture(scope="session")
def tokenizer(splits):
    return train_tokenizer(
        [build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400
    )


@pytest.fixture(scope="session")
def finetuned_state(splits, tokenizer, tmp_path_factory):
    """Weights of a hidden-64 Llama that has memorised every QA pair (~5 s on 2 cores)."""
    model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)
    finetune(model, tokenizer, splits["full"], str(tmp_path_factory.mktemp("ft")), epochs=40, seed=0)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def model(tokenizer, finetuned_state):
    """A fresh copy of the fine-tuned tiny model for each test."""
    m = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)
    m.load_state_dict(finetuned_state)
    return m


@pytest.fixture
def small_sets(splits):
    """A forget set of 2 authors and a retain set of 18."""
    return splits["forget10"], splits["retain90"]


def config_kwargs(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        num_train_epochs=5,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    base.update(overrides)
    return base


@pytest.fixture
def make_config(tmp_path):
    def make(config_cls, **overrides):
        return config_cls(**config_kwargs(tmp_path, **overrides))

    return make


@pytest.fixture
def sgu_update(tokenizer, make_config):
    """`fn(model, forget, retain, watch=None, **config)`: the SGU update of one SGD step with lr 1.

    Returns minus the parameter change, i.e. the selected update, flattened. `watch(trainer)` runs
    before training (to instrument the trainer).
    """
    from sgu_llm.trainers import SGUConfig, SGUTrainer

    def update(model, forget, retain, watch=None, **overrides):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        config = dict(
            optim="sgd",
            learning_rate=1.0,
            max_steps=1,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
            weight_decay=0.0,
        )
        trainer = SGUTrainer(
            model,
            make_config(SGUConfig, **{**config, **overrides}),
            forget,
            retain,
            processing_class=tokenizer,
        )
        if watch is not None:
            watch(trainer)
        trainer.train()
        return torch.cat([(before[n] - p.detach()).flatten() for n, p in model.named_parameters()])

    return update


def mean_nll(model, dataset, tokenizer):
    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.evaluation import answer_nll

    return (
        answer_nll(model, prepare_qa_dataset(dataset, tokenizer, "eval"), tokenizer.pad_token_id)
        .mean()
        .item()
    )


@pytest.fixture
def nll():
    return mean_nll


def _margin_record(request, name, value, bound, op):
    path = os.environ.get("SGU_LLM_MARGINS")  # a JSONL file: every margin checked, for scripts/compare_margins.py
    if path:
        record = {
            "test": request.node.nodeid, "name": name, "value": float(value), "bound": float(bound), "op": op,
            "capability": torch.backends.cpu.get_cpu_capability(), "forced": os.environ.get("ATEN_CPU_CAPABILITY"),
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


@pytest.fixture
def margin(request):
    """`margin(name, value, ">", bound)`: assert a training outcome against its bound and, with
    SGU_LLM_MARGINS=FILE, record both, so CI can show how far each outcome sits from its bound under each
    kernel set (`.ci/run` runs the `outcome` tests again under another machine's CPU kernels)."""

    def check(name: str, value: float, op: str, bound: float) -> None:
        _margin_record(request, name, value, bound, op)
        ok = value > bound if op == ">" else value < bound if op == "<" else value <= bound
        assert ok, f"{name}: {value:.4g} is not {op} {bound:.4g}"

    return check


torch.set_num_threads(2)
