"""Bad input gets a clear error that names the problem and the fix, and nothing is written."""

import datasets
import pytest
from peft import LoraConfig

from sgu_llm.trainers import GradDiffConfig, GradDiffTrainer, SGUConfig, SGUTrainer


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
        ("forget_loss", "kl", "forget_loss must be one of"),
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


def test_tokenizer_that_does_not_fit_the_model(tokenizer, small_sets, make_config):
    from sgu_llm.models import tiny_llama, train_tokenizer

    forget, retain = small_sets
    small = train_tokenizer(["a b c"] * 3, vocab_size=30)
    model = tiny_llama(small, hidden_size=16, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="tokenizer has 400 tokens but the model embeds only"):
        SGUTrainer(model, make_config(SGUConfig), forget, retain, processing_class=tokenizer)
