"""Attacks on the unlearning: quantization and relearning."""

import copy

import numpy as np
import pytest
import torch

from sgu_llm.evaluation.attacks import attack_report, quantize_weights
from sgu_llm.report.tables import run_attack_rows

KW = dict(prompt_format="phi", system_prompt=None, batch_size=64, max_new_tokens=24)


@pytest.mark.parametrize("bits,levels", [(8, 255), (4, 15)])
def test_quantization_is_round_to_nearest_per_output_channel(model, bits, levels):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_weights(model, bits)
    for (name, a), (_, b) in zip(model.named_modules(), q.named_modules()):
        if isinstance(a, torch.nn.Linear):
            scale = a.weight.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
            assert (a.weight - b.weight).abs().le(scale / 2 + 1e-7).all(), name  # nearest level
            assert max(len(torch.unique(row)) for row in b.weight) <= levels
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy is quantized


def test_relearning_brings_back_what_gradient_ascent_removed(model, tokenizer, splits):
    from sgu_llm.core.losses import per_example_nll
    from sgu_llm.data.pairing import pad_batch, prepare_qa_dataset

    forget = splits["forget10_perturbed"]
    rows = prepare_qa_dataset(forget.select_columns(["question", "answer"]), tokenizer, "f").to_list()
    ascended = copy.deepcopy(model)
    opt = torch.optim.SGD(ascended.parameters(), lr=0.1)
    batch = pad_batch(rows, tokenizer.pad_token_id)
    for _ in range(40):  # gradient ascent on the whole forget set, until its answers are unlikely
        logits = ascended(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n = per_example_nll(logits, batch["labels"])
        if (nll / n).mean() > 3.0:  # mean answer-token probability about e^-3
            break
        (-(nll.sum() / n.sum())).backward()
        opt.step()
        opt.zero_grad()
    reference = np.ones(len(forget))  # any fixed reference: this test looks at probability and ROUGE
    report = attack_report({"ascended": ascended}, tokenizer, forget, reference, KW, relearn_steps=20,
                           relearn_learning_rate=1e-3, bits=(4,))
    m = report["models"]["ascended"]
    assert report["rows_measured"] == len(forget) // 2
    assert m["relearn"]["forget_prob"] > 2 * m["none"]["forget_prob"]  # the held-out half comes back
    assert set(m) == {"none", "relearn", "int4"}
    assert ["ascended", "relearn"] == run_attack_rows(report)[1][:2]


def test_attacks_need_two_halves(model, tokenizer, splits):
    with pytest.raises(ValueError, match="at least 4 rows"):
        attack_report({"m": model}, tokenizer, splits["forget10_perturbed"].select(range(3)), np.ones(3), KW)
