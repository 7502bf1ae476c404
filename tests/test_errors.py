"""Bad input gets a clear error that names the problem and the fix, and nothing is written."""

import datasets
import pytest
from peft import LoraConfig

from sgu_llm.trainers import GradDiffConfig, GradDiffTrainer, SGUConfig, SGUTrainer, get_method


def test_empty_forget_or_retain_set(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    empty = forget.select([])
    with pytest.raises(ValueError, match="the forget set is empty"):
        SGUTrainer(model, make_config(SGUConfig), empty, retain, processing_class=tokenizer)
    with pytest.raises(ValueError, match="the retain set is empty"):
        SGUTrainer(model, make_config(SGUConfig), forget, retain.select([]), processing_class=tokenizer)


def test_missing_columns(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    broken = forget.rename_column("answer", "response")
    with pytest.raises(ValueError, match=r"forget set has columns .* missing \['answer'\]"):
        SGUTrainer(model, make_config(SGUConfig), broken, retain, processing_class=tokenizer)


def test_not_a_dataset(model, tokenizer, small_sets, make_config):
    _, retain = small_sets
    with pytest.raises(ValueError, match="must be a datasets.Dataset.*from_list"):
        SGUTrainer(
            model,
            make_config(SGUConfig),
            [{"question": "q", "answer": "a"}],
            retain,
            processing_class=tokenizer,
        )


def test_answer_truncated_away(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="no answer token.*raise max_length"):
        SGUTrainer(model, make_config(SGUConfig, max_length=4), forget, retain, processing_class=tokenizer)


def test_tokenized_input_accepted(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    rows = datasets.Dataset.from_dict({"input_ids": [[1, 5, 6, 2]] * 4, "labels": [[-100, -100, 6, 2]] * 4})
    trainer = SGUTrainer(model, make_config(SGUConfig, max_steps=1), rows, retain, processing_class=tokenizer)
    assert trainer.train_dataset[0]["forget"]["attention_mask"] == [1, 1, 1, 1]


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
@pytest.mark.parametrize("name", ["q_d", "q_m"])
def test_quantile_level_out_of_range(tmp_path, name, q):
    with pytest.raises(ValueError, match=f"{name} must lie strictly between 0 and 1"):
        SGUConfig(output_dir=str(tmp_path), report_to="none", **{name: q})


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("selective_function", "magic", "unknown selective function 'magic'"),
        ("threshold_scope", "layer", "threshold_scope must be one of"),
        ("threshold_population", "most", "threshold_population must be one of"),
        ("forget_loss", "kl", "unknown forget_loss .kl.; registered objectives"),
        ("prompt_format", "alpaca", "prompt_format must be one of"),
        ("unlearn_params", "(", "unlearn_params is not a valid regex"),
        ("reverse_scale", -1.0, "must be >= 0"),
        ("quantile_sample_size", 0, "quantile_sample_size and max_exact_quantile must be positive"),
        (
            "quantile_sample_block",
            0,
            r"quantile_sample_block must be between 1 and quantile_sample_size \(16384\)",
        ),
    ],
)
def test_config_validation(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        SGUConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_lora_target_modules_not_in_model(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    lora = LoraConfig(target_modules=["c_attn", "q_proj"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"target_modules \['c_attn'\] match no module.*q_proj"):
        SGUTrainer(
            model, make_config(SGUConfig), forget, retain, processing_class=tokenizer, peft_config=lora
        )


def test_param_filter_matching_nothing(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="no trainable parameter is left"):
        SGUTrainer(
            model,
            make_config(SGUConfig, unlearn_params="transformer\\.h\\."),
            forget,
            retain,
            processing_class=tokenizer,
        )


def test_output_dir_with_previous_run_is_refused(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"keep": "me"}')
    with pytest.raises(ValueError, match="already holds a previous run.*overwrite_output_dir"):
        GradDiffTrainer(model, make_config(GradDiffConfig), forget, retain, processing_class=tokenizer)
    assert (out / "config.json").read_text() == '{"keep": "me"}'  # nothing already written is lost
    # Asking explicitly is allowed.
    GradDiffTrainer(
        model,
        make_config(GradDiffConfig, overwrite_output_dir=True),
        forget,
        retain,
        processing_class=tokenizer,
    )


def test_wrong_config_class(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="needs args of type SGUConfig"):
        SGUTrainer(model, make_config(GradDiffConfig), forget, retain, processing_class=tokenizer)


def test_fsdp_launch_that_accelerate_runs_without_fsdp_warns(model, tokenizer, small_sets, make_config, monkeypatch):
    """An FSDP accelerate config on CPU: Accelerate quietly runs plain data parallel; the user is told."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="asked for FSDP .* enables FSDP on GPUs only"):
        trainer = SGUTrainer(model, make_config(SGUConfig), *small_sets, processing_class=tokenizer)
    assert not trainer.is_fsdp_enabled


def test_tokenizer_that_does_not_fit_the_model(tokenizer, small_sets, make_config):
    from sgu_llm.models.tiny import tiny_llama, train_tokenizer

    forget, retain = small_sets
    small = train_tokenizer(["a b c"] * 3, vocab_size=30)
    model = tiny_llama(small, hidden_size=16, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="tokenizer has 400 tokens but the model embeds only"):
        SGUTrainer(model, make_config(SGUConfig), forget, retain, processing_class=tokenizer)


# ---- the bad-input catalogue: data files, recipes, flags, models, caches, output folders, checkpoints ----


def _tofu_folder(tmp_path, splits, **overrides):
    """A local TOFU folder holding forget10 / retain90 (JSON lines), with some files replaced by raw text."""
    from sgu_llm.data.tofu import save_splits

    folder = tmp_path / "tofu"
    save_splits({k: splits[k] for k in ("forget10", "retain90")}, str(folder))
    for name, text in overrides.items():
        (folder / f"{name}.json").write_text(text)
    return str(folder)


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"question": "q", "answer": ', "could not be read as json.*fix or regenerate"),  # corrupt
        ("", "is empty"),  # empty
    ],
)
def test_corrupt_or_empty_split_file_is_named(splits, tmp_path, content, message):
    from sgu_llm.data.tofu import load_tofu

    folder = _tofu_folder(tmp_path, splits, forget10=content)
    with pytest.raises(ValueError, match=message) as err:
        load_tofu("forget10", source=folder)
    assert "forget10.json" in str(err.value)


def test_missing_split_file(splits, tmp_path):
    from sgu_llm.data.tofu import load_tofu

    with pytest.raises(ValueError, match=r"no file for TOFU config 'forget05'.*forget05.json"):
        load_tofu("forget05", source=_tofu_folder(tmp_path, splits))


def test_wrong_schema_names_the_missing_fields(splits, tmp_path):
    from sgu_llm.data.tofu import load_tofu

    folder = _tofu_folder(tmp_path, splits, forget10_perturbed='{"question": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match=r"missing field\(s\) \['paraphrased_answer', 'perturbed_answer'"):
        load_tofu("forget10_perturbed", source=folder)


def test_overlapping_forget_and_retain(splits):
    from sgu_llm.data.tofu import check_disjoint

    with pytest.raises(ValueError, match="share 20 question.*remove the overlap"):
        check_disjoint(splits["forget10"], splits["full"])


def test_unknown_recipe_key_with_a_suggestion(tmp_path):
    from sgu_llm.experiments.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("method: sgu\nlearning_rte: 1e-3\n")
    with pytest.raises(ValueError, match=r"unknown keys: learning_rte \(did you mean 'learning_rate'\?\)"):
        load_recipe(str(path))


def test_flags_that_unlearn_ignores_are_refused(tmp_path, capsys):
    from sgu_llm.cli import main

    out = tmp_path / "out"
    code = main(["unlearn", "--config", "recipes/tiny-llama/sgu.yaml", "--sae_hook_name", "blocks.0.hook_resid_post",
                 "--max_new_tokens", "5", "--output_dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not use --max_new_tokens, --sae_hook_name" in err and "sgu-llm run" in err
    assert not out.exists()  # refused before anything was written


def test_probe_hook_on_a_layer_the_model_does_not_have(model):
    from sgu_llm.models.hooks import resolve_hook

    with pytest.raises(ValueError, match="names layer 7 but the model has 2 layers.*from 0 to 1"):
        resolve_hook(model, "blocks.7.hook_resid_post")


def test_corrupt_cached_model_names_the_folder(splits, tokenizer, tmp_path):
    from sgu_llm.models.benchmark import BenchmarkArguments, cached_finetuned_model

    args = BenchmarkArguments(cache_dir=str(tmp_path / "cache"), hidden_size=16, num_heads=2, finetune_max_epochs=1)
    train = splits["forget10"]
    cached_finetuned_model("target", train, tokenizer, args, seed=0)
    [entry] = (tmp_path / "cache" / "models").iterdir()
    (entry / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read.*delete that folder and run again") as err:
        cached_finetuned_model("target", train, tokenizer, args, seed=0)
    assert str(entry) in str(err.value)


def test_a_model_without_a_language_model_head(tokenizer, small_sets, make_config):
    from transformers import LlamaModel

    from sgu_llm.models.tiny import tiny_llama

    forget, retain = small_sets
    backbone = LlamaModel(tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2).config)
    with pytest.raises(ValueError, match="no language-model head.*AutoModelForCausalLM"):
        SGUTrainer(backbone, make_config(SGUConfig), forget, retain, processing_class=tokenizer)


def test_rows_longer_than_the_model_context(model, tokenizer, small_sets, make_config):
    _, retain = small_sets
    long_rows = datasets.Dataset.from_dict({"input_ids": [[5] * 300] * 2, "labels": [[-100] + [5] * 299] * 2})
    with pytest.raises(ValueError, match="rows of 300 tokens but the model's context is 256 tokens.*max_length"):
        SGUTrainer(model, make_config(SGUConfig), long_rows, retain, processing_class=tokenizer)
    # max_length cuts tokenised rows too, as it does QA pairs: then they fit.
    trainer = SGUTrainer(model, make_config(SGUConfig, max_length=200), long_rows, retain, processing_class=tokenizer)
    assert len(trainer.train_dataset[0]["forget"]["input_ids"]) == 200


def test_unwritable_output_dir(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    with pytest.raises(ValueError, match="cannot be written.*choose a folder you can write to"):
        SGUTrainer(model, make_config(SGUConfig, output_dir=str(blocker / "out")), forget, retain,
                   processing_class=tokenizer)
    assert blocker.read_text() == "keep"


def test_resume_from_a_checkpoint_of_another_method(tmp_path):
    import torch

    from sgu_llm.trainers import NPOConfig
    from sgu_llm.trainers.outputs import resume_argument

    ckpt = tmp_path / "out" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    torch.save(NPOConfig(output_dir=str(tmp_path / "out"), report_to="none"), ckpt / "training_args.bin")
    cfg = SGUConfig(output_dir=str(tmp_path / "out"), report_to="none", resume_from_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="written by NPOConfig, but this run is SGUConfig.*method that wrote it"):
        resume_argument(cfg)
    cfg.resume_from_checkpoint = "true"  # the last checkpoint is checked the same way
    with pytest.raises(ValueError, match="written by NPOConfig"):
        resume_argument(cfg)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model_name_or_path": "builtin:gpt-17"}, "unknown builtin model 'gpt-17'"),
        ({"model_name_or_path": "builtin:tiny-llama", "gguf_file": "x.gguf"}, "built here.*unset gguf_file"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    from sgu_llm.experiments.config import ModelArguments

    with pytest.raises(ValueError, match=message):
        ModelArguments(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"finetune_train_layers": 0}, "finetune_train_layers must be at least 1"),
        ({"finetune_lora_r": -1}, "finetune_lora_r must be 0"),
        ({"finetune_check_every": 0}, "finetune_check_every must be at least 1"),
        ({"noise_floor_seed": 0}, "noise_floor_seed must differ from model_seed"),
    ],
)
def test_bad_benchmark_arguments(kwargs, message):
    from sgu_llm.models.benchmark import BenchmarkArguments

    with pytest.raises(ValueError, match=message):
        BenchmarkArguments(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"causal_random_draws": 1}, "at least 2"),
        ({"causal_scales": [1.5]}, "factors below 1"),
        ({"sae_hook_name": "layer3"}, "is not blocks.L"),
    ],
)
def test_bad_probe_arguments(kwargs, message):
    from sgu_llm.probe.sae_probe import ProbeArguments

    with pytest.raises(ValueError, match=message):
        ProbeArguments(**kwargs)


def test_chat_template_prompt_without_a_template(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template.*'phi' or 'llama2'"):
        SGUTrainer(model, make_config(SGUConfig, prompt_format="chat_template"), forget, retain,
                   processing_class=tokenizer)


def test_a_model_partitioned_as_it_loaded_is_not_copied_for_the_reference(model, tokenizer, small_sets, make_config):
    """ZeRO-3 with zero3_init_flag partitions the weights at from_pretrained: a deepcopy would copy empty
    placeholders, so NPO without a ref_model names the two fixes instead."""
    forget, retain = small_sets
    config_cls, trainer_cls = get_method("npo")
    first = next(model.parameters())
    first.ds_id = 0  # what deepspeed.zero.Init leaves on each parameter
    try:
        with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3 as it loaded.*zero3_init_flag: false"):
            trainer_cls(model, make_config(config_cls), forget, retain, processing_class=tokenizer)
    finally:
        del first.ds_id
