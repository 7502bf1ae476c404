"""The benchmark's model cache: reuse, rebuild on change, and tokenizer/model mismatch errors."""

import json
import os

import pytest

from sgu_llm.data.benchmark import training_sets
from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.evaluation import check_tokenizer_matches, evaluate_model
from sgu_llm.models.benchmark import BenchmarkArguments, cached_finetuned_model, cached_tokenizer


@pytest.fixture(scope="module")
def tiny_data():
    s = synthetic_tofu(num_authors=10, qa_per_author=3, seed=0)
    return {
        "forget": s["forget10"],
        "retain": s["retain90"],
        "real_authors": s["real_authors_perturbed"],
        "world_facts": s["world_facts_perturbed"],
    }


def small_args(cache, **kw):
    return BenchmarkArguments(
        **{"cache_dir": str(cache), "hidden_size": 32, "num_heads": 2, "finetune_max_epochs": 2, **kw}
    )


def test_tokenizer_is_cached(tmp_path):
    texts = ["Question: a b c\nAnswer: d e"] * 5
    a = cached_tokenizer(texts, 60, str(tmp_path))
    b = cached_tokenizer(texts, 60, str(tmp_path))
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(os.listdir(tmp_path / "tokenizers")) == 1


def test_model_cache_reuse_and_rebuild(tmp_path, tiny_data):
    texts = [build_prompt(r["question"]) + r["answer"] for k in tiny_data for r in tiny_data[k]]
    tok = cached_tokenizer(texts, 200, str(tmp_path))
    train = training_sets(tiny_data)["retain"]
    args = small_args(tmp_path)
    model, meta = cached_finetuned_model("retain", train, tok, args, seed=0)
    entry = tmp_path / "models" / f"retain-{meta['key'][:16]}"
    weights = entry / "model.safetensors"
    mtime = os.path.getmtime(weights)
    again, meta2 = cached_finetuned_model("retain", train, tok, args, seed=0)
    assert meta2 == meta and os.path.getmtime(weights) == mtime  # reused, not retrained
    # A changed model config is a different cache entry, trained anew.
    bigger, meta3 = cached_finetuned_model("retain", train, tok, small_args(tmp_path, hidden_size=48), seed=0)
    assert bigger.config.hidden_size == 48 and meta3["key"] != meta["key"]
    # A cache entry whose config no longer matches its key (edited by hand) is rebuilt, not trusted.
    cfg = json.loads((entry / "config.json").read_text())
    cfg["hidden_size"] = 64
    cfg["intermediate_size"] = 256
    (entry / "config.json").write_text(json.dumps(cfg))
    rebuilt, _ = cached_finetuned_model("retain", train, tok, args, seed=0)
    assert rebuilt.config.hidden_size == 32
    assert json.loads((entry / "config.json").read_text())["hidden_size"] == 32
    # Another seed (the noise floor) is another entry.
    _, meta4 = cached_finetuned_model("noise_floor", train, tok, args, seed=1)
    assert meta4["key"] != meta["key"]


def test_tokenizer_model_mismatch_is_an_error(tmp_path, tiny_data):
    from sgu_llm.models.tiny import tiny_llama, train_tokenizer

    small = train_tokenizer(["a b c d"] * 3, vocab_size=30)
    big = train_tokenizer([r["question"] + " " + r["answer"] for r in tiny_data["retain"]], vocab_size=200)
    model = tiny_llama(small, hidden_size=16, num_layers=1, num_heads=2)
    check_tokenizer_matches(model, small)
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model embeds only"):
        evaluate_model(model, big, {})


def test_config_validation():
    with pytest.raises(ValueError, match="noise_floor_seed must differ"):
        BenchmarkArguments(model_seed=1, noise_floor_seed=1)
    with pytest.raises(ValueError, match="finetune_target_accuracy"):
        BenchmarkArguments(finetune_target_accuracy=1.5)


def test_models_are_shared_across_splits_and_seeds(tmp_path):
    """Cached by what they train on: one target for every forget split of a data set, and the noise
    floor of model seed s is the retain model of seed s + 1."""
    from sgu_llm.models.benchmark import benchmark_models

    s = synthetic_tofu(num_authors=10, qa_per_author=3, seed=0)

    def data(forget, retain):
        return {
            "forget": s[forget],
            "retain": s[retain],
            "real_authors": s["real_authors_perturbed"],
            "world_facts": s["world_facts_perturbed"],
        }

    _, _, m10 = benchmark_models(data("forget10", "retain90"), small_args(tmp_path, noise_floor_seed=1))
    _, _, m05 = benchmark_models(data("forget05", "retain95"), small_args(tmp_path), roles=("target",))
    _, _, seed1 = benchmark_models(
        data("forget10", "retain90"), small_args(tmp_path, model_seed=1, noise_floor_seed=2), roles=("retain",)
    )
    assert m05["target"]["key"] == m10["target"]["key"]
    assert seed1["retain"]["key"] == m10["noise_floor"]["key"] != m10["retain"]["key"]
    assert len(os.listdir(tmp_path / "models")) == 3  # target, retain seed 0, retain seed 1
