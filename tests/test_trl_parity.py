"""The trainer API a TRL user expects: a model id, a default config, a model card on every save, use_peft."""

import json

import pytest
from peft import LoraConfig

from sgu_llm import SGUConfig, SGUTrainer
from sgu_llm.trainers import GradDiffTrainer


@pytest.fixture
def saved_model(model, tokenizer, tmp_path):
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_model_as_a_path_and_default_args(saved_model, small_sets, tmp_path, monkeypatch):
    """`SGUTrainer("path", forget_dataset=..., retain_dataset=...)`: model and tokenizer loaded, a default config
    whose output_dir is named after the model and the method (TRL's rule)."""
    monkeypatch.chdir(tmp_path)
    forget, retain = small_sets
    trainer = SGUTrainer(saved_model, forget_dataset=forget, retain_dataset=retain)
    assert isinstance(trainer.args, SGUConfig) and trainer.args.output_dir.endswith("tiny-sgu")
    assert trainer.processing_class is not None and trainer.processing_class.pad_token_id is not None
    assert GradDiffTrainer.method_tag() == "graddiff"


def test_eval_dataset_is_refused_with_the_alternative(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="holdout_dataset"):
        SGUTrainer(model, make_config(SGUConfig), forget, retain, tokenizer, eval_dataset=forget)


def test_save_model_writes_a_card_with_tags_and_no_secret(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    args = make_config(SGUConfig, hub_token="hf_SECRET_42", num_train_epochs=1)
    trainer = SGUTrainer(model, args, forget, retain, tokenizer)
    assert set(trainer.model.model_tags) >= {"unlearning", "sgu-llm", "sgu"}
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "- unlearning" in card and "- sgu-llm" in card and "# Unlearned with sgu-llm (sgu)" in card
    assert "hf_SECRET_42" not in card and '"q_d": 0.9' in card
    assert f"Forget set: {len(forget)} examples" in card
    for path in (tmp_path / "saved").iterdir():  # nothing the save wrote holds the token
        assert b"hf_SECRET_42" not in path.read_bytes(), path


def test_save_model_honours_save_merged(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = SGUTrainer(model, make_config(SGUConfig, save_merged=True), forget, retain, tokenizer, peft_config=peft)
    trainer.save_model(str(tmp_path / "m"))
    assert (tmp_path / "m" / "model.safetensors").exists() and not (tmp_path / "m" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    assert (tmp_path / "m" / "README.md").exists()


def test_use_lora_is_a_deprecated_alias_of_use_peft():
    from sgu_llm.experiments.config import ModelArguments

    assert ModelArguments(use_peft=True).peft_config() is not None
    with pytest.warns(FutureWarning, match="use_peft"):
        args = ModelArguments(use_lora=True)
    assert args.use_peft and args.peft_config() is not None
