"""Threshold schedules over training; general knowledge in the retain batches."""

import pytest

from sgu_llm.data.benchmark import unlearning_retain_set
from sgu_llm.trainers import SGUConfig, SGUTrainer

# Equalities of runs and measured tolerances: .ci/run checks them under another machine's CPU kernels too.
pytestmark = pytest.mark.outcome


def test_q_schedule_is_linear_over_steps(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    cfg = make_config(SGUConfig, selective_function="sgu_reverse", q_m=0.9, q_m_final=0.5, max_steps=5)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    seen = []
    original = trainer._step_settings

    def spy():
        s = original()
        seen.append((trainer.state.global_step, s.q_d, s.q_m))
        return s

    trainer._step_settings = spy
    trainer.train()
    assert [round(q_m, 6) for _, _, q_m in seen] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert all(q_d == 0.9 for _, q_d, _ in seen)


def test_schedule_end_must_be_a_quantile(tmp_path):
    with pytest.raises(ValueError, match="q_d_final must lie strictly between 0 and 1"):
        SGUConfig(output_dir=str(tmp_path), report_to="none", q_d_final=1.0)


def test_retain_general_adds_the_general_sets(splits):
    data = {
        "retain": splits["retain90"],
        "real_authors": splits["real_authors_perturbed"],
        "world_facts": splits["world_facts_perturbed"],
    }
    assert unlearning_retain_set(data, False) is data["retain"]
    mixed = unlearning_retain_set(data, True)
    assert len(mixed) == len(splits["retain90"]) + len(splits["real_authors_perturbed"]) + len(
        splits["world_facts_perturbed"]
    )
    assert set(splits["world_facts_perturbed"]["question"]) <= set(mixed["question"])
    assert mixed.column_names == ["question", "answer"]
