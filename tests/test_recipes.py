"""Every recipe parses into the method's config; unknown keys are rejected."""

import glob
import os
import re

import pytest
import torch
import yaml

from sgu_llm.experiments.config import load_recipe, parse_args
from sgu_llm.models.memory import GiB, recipe_estimate
from sgu_llm.trainers import get_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
    p for p in glob.glob(os.path.join(ROOT, "recipes", "*", "*.yaml")) if "/accelerate/" not in p and "/sweeps/" not in p
)
ACCELERATE = sorted(glob.glob(os.path.join(ROOT, "recipes", "accelerate", "*.yaml")))


def test_there_are_recipes():
    names = {os.path.relpath(p, os.path.join(ROOT, "recipes")) for p in RECIPES}
    assert {"tiny-llama/sgu.yaml", "llama-3.2-1b-instruct/sgu.yaml"} <= names
    assert ACCELERATE


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_parses(path, tmp_path):
    cfg = load_recipe(path)
    argv = ["--config", path, "--output_dir", str(tmp_path / "o")]
    if cfg.get("bf16") and not torch.cuda.is_available():
        argv += ["--use_cpu", "true"]  # GPU recipes: TrainingArguments refuses bf16 without a GPU otherwise
    script, model, bench, evaluation, probe, config = parse_args(argv)
    assert isinstance(config, get_method(script.method)[0])
    for key, value in cfg.items():
        got = next(getattr(obj, key) for obj in (script, model, bench, evaluation, probe, config) if hasattr(obj, key))
        if key == "report_to":
            assert got == [] or got == value or got == [value]
        else:
            assert got == value, key


MEMORY_LINE = re.compile(r"# memory: engine=(\w+) gpus=(\d+) -> ([\d.]+) GiB per GPU")
REAL_MODELS = [p for p in RECIPES if "/llama-" in p]


@pytest.mark.parametrize("path", REAL_MODELS, ids=lambda p: os.path.relpath(p, ROOT))
def test_real_model_recipes_state_what_the_memory_model_predicts(path, tmp_path):
    """Each Llama recipe's header gives the memory model's GiB per GPU for its engine and GPU count; the model is
    built from its published shape on the meta device (no download), and the figure is recomputed here."""
    header = MEMORY_LINE.search(open(path).read())
    assert header, f"{path} has no '# memory: engine=... gpus=... -> X GiB per GPU' line"
    engine, gpus, stated = header.group(1), int(header.group(2)), float(header.group(3))
    cfg = load_recipe(path)
    *_, config = parse_args(["--config", path, "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])
    estimate = recipe_estimate(cfg, engine, gpus, get_method(cfg["method"])[1].needs_reference_model(config))
    assert estimate.total / GiB == pytest.approx(stated, abs=0.05)
    assert estimate.total < 0.9 * 80 * GiB  # every shipped recipe fits its GPUs


def test_unknown_key_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "sgu", "q_d": 0.8, "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="unknown keys: learning_rat \\(did you mean 'learning_rate'\\?\\)"):
        load_recipe(str(path))


def test_method_specific_keys_are_checked_against_that_method(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "graddiff", "q_d": 0.8}))  # q_d belongs to SGU only
    with pytest.raises(ValueError, match="unknown keys: q_d"):
        load_recipe(str(path))


def test_command_line_overrides_recipe(tmp_path):
    path = os.path.join(ROOT, "recipes", "tiny-llama", "sgu.yaml")
    *_, config = parse_args(["--config", path, "--q_d", "0.75", "--output_dir", str(tmp_path)])
    assert config.q_d == 0.75


@pytest.mark.parametrize("path", ACCELERATE, ids=os.path.basename)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(path)
    assert cfg.num_processes >= 2


def test_readme_stays_short():
    """A newcomer reads the README in five minutes: the rest lives in docs/."""
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    assert os.path.getsize(readme) < 8000
