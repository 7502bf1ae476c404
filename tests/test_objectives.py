"""The forget objectives: each loss against a hand computation, alternatives, the calibrated objective, and
SGU receiving an objective's gradient as g_f."""

import copy
import math

import datasets
import pytest
import torch

from sgu_llm.core.losses import (
    activation_distance,
    answer_margins,
    generic_logits,
    per_example_nll,
    preference_loss,
    quantile_matching_loss,
    row_bands,
    row_gate_weights,
    undial_loss,
)
from sgu_llm.data.alternatives import AlternativeSettings, generate_alternatives, key_terms
from sgu_llm.data.idk import assign_idk, idk_answers
from sgu_llm.data.pairing import prepare_qa_dataset, training_view
from sgu_llm.data.prompts import tokenize_qa
from sgu_llm.objectives import list_objectives
from sgu_llm.selection import Action, register_selective_function
from sgu_llm.trainers import SGUConfig, get_method
from sgu_llm.trainers.objective import AltPOConfig, ObjectiveTrainer

# ---- the pure losses, against numbers worked out by hand --------------------------------------------


def test_preference_loss_by_hand():
    # beta 0.5, chosen delta 1, rejected delta -1: -(2 / 0.5) * log sigmoid(0.5 * 2) = -4 * log(1 / (1 + e^-1))
    expected = -4 * math.log(1 / (1 + math.exp(-1.0)))
    got = preference_loss(torch.tensor([1.0]), torch.tensor([-1.0]), beta=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_undial_loss_by_hand():
    # Two answer positions over a 3-token vocabulary; the reference is uniform, beta = ln 2 halves the true
    # token's weight: target (0.5, 1, 1) / 2.5 = (0.2, 0.4, 0.4) with the true token first.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    ref = torch.zeros(1, 3, 3)
    labels = torch.tensor([[-100, 0, 1]])  # positions 0 and 1 predict tokens 0 and 1
    loss, n = undial_loss(logits, ref, labels, beta=math.log(2))
    target0 = torch.tensor([0.2, 0.4, 0.4])  # true token 0
    target1 = torch.tensor([0.4, 0.2, 0.4])  # true token 1
    ce0 = -(target0 * torch.log_softmax(logits[0, 0], -1)).sum()
    ce1 = -(target1 * torch.log_softmax(logits[0, 1], -1)).sum()
    assert n.item() == 2
    assert loss.item() == pytest.approx((ce0 + ce1).item(), rel=1e-6)


def test_activation_distance_by_hand():
    hidden = torch.tensor([[[1.0, 3.0], [5.0, 5.0], [0.0, 0.0]]])
    target = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[True, True, False]])
    # position 0: ((0)^2 + (2)^2) / 2 = 2; position 1: (16 + 16) / 2 = 16; mean over the two = 9
    assert activation_distance(hidden, target, mask).tolist() == [9.0]


def test_generic_logits_by_hand():
    base, reinforced = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([5.0, 0.0, 0.5])
    # only the first token was boosted (by 3): it loses alpha * 3
    assert generic_logits(base, reinforced, alpha=2.0).tolist() == [-4.0, 1.0, 0.5]


def test_answer_margins_and_quantile_matching_by_hand():
    margins = answer_margins(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -4.0, -1.0]), torch.tensor([0, 0, 1]), 2)
    assert margins.tolist() == [2.0, -2.0]  # row 0: -1 - mean(-2, -4); row 1: -3 - (-1)
    reference = torch.tensor([-1.0, 0.0, 1.0])
    # ranks: -2 first (level 1/4 -> quantile -0.5), 2 second (level 3/4 -> 0.5)
    assert quantile_matching_loss(margins, reference).tolist() == [2.25, 2.25]


def test_calibrated_loss_is_zero_when_forget_margins_match_the_holdout():
    holdout = torch.sort(torch.randn(40, generator=torch.Generator().manual_seed(0))).values
    levels = (torch.arange(8) + 0.5) / 8 * (len(holdout) - 1)
    low, w = levels.floor().long(), levels - levels.floor()
    matching = holdout[low] * (1 - w) + holdout[(low + 1).clamp(max=39)] * w
    shuffled = matching[torch.randperm(8, generator=torch.Generator().manual_seed(1))].requires_grad_(True)
    loss = quantile_matching_loss(shuffled, holdout)
    assert torch.allclose(loss, torch.zeros(8), atol=1e-10)
    loss.sum().backward()
    assert torch.allclose(shuffled.grad, torch.zeros(8), atol=1e-10)  # nothing pulls a calibrated row
    # Two-sided: margins above their quantiles are pushed down, below them pulled up.
    high = (matching + 1.0).requires_grad_(True)
    quantile_matching_loss(high, holdout).sum().backward()
    assert (high.grad > 0).all()  # descent lowers them
    low_m = (matching - 1.0).requires_grad_(True)
    quantile_matching_loss(low_m, holdout).sum().backward()
    assert (low_m.grad < 0).all()  # descent raises them


# ---- alternatives and "I don't know" answers ----------------------------------------------------------


def test_key_terms_are_the_rare_words_outside_the_question():
    freq = {"was": 90, "born": 40, "in": 99, "lisbon": 4, "1972": 1, "year": 30, "of": 80, "birth": 30, "is": 90}
    assert key_terms("Ada was born in Lisbon.", "Where was Ada born?", freq) == ["lisbon"]
    assert key_terms("Ada's year of birth is 1972.", "When was Ada born?", freq) == ["1972"]


@pytest.fixture(scope="module")
def alternatives_of(splits, tokenizer, finetuned_state):
    from sgu_llm.models.tiny import tiny_llama

    model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)
    model.load_state_dict(finetuned_state)
    forget = splits["forget10"]
    corpus = list(splits["full"]["answer"])

    def sample(seed: int) -> list[list[str]]:
        settings = AlternativeSettings(k=3, tries=12, seed=seed)
        return generate_alternatives(model, tokenizer, forget["question"], forget["answer"], settings, corpus)

    return sample


def test_alternatives_are_deterministic_and_disjoint_from_the_evaluation(alternatives_of, splits):
    first, again, other = alternatives_of(0), alternatives_of(0), alternatives_of(1)
    assert first == again  # the same model, rows and seed: the same alternatives
    assert first != other
    forget, evaluation = splits["forget10"], splits["forget10_perturbed"]
    assert sum(len(a) for a in first) >= len(forget)  # most rows get some
    eval_answers = {a.strip().lower() for r in evaluation for a in [r["paraphrased_answer"], *r["perturbed_answer"]]}
    for answer, alts in zip(forget["answer"], first):
        assert len(alts) == len(set(alts)) <= 3
        for alt in alts:
            assert alt.strip().lower() != answer.strip().lower()
            assert alt.strip().lower() not in eval_answers


def test_idk_answers_shipped_and_seeded():
    answers = idk_answers()
    assert len(answers) >= 10 and "I don't know." in answers
    assert assign_idk(5, answers, seed=3) == assign_idk(5, answers, seed=3)


def test_training_never_sees_evaluation_columns(splits):
    view = training_view(splits["forget10_perturbed"])
    assert view.column_names == ["question", "answer"]


# ---- the objectives in the trainers --------------------------------------------------------------------


def test_every_objective_is_registered_and_has_a_standalone_method():
    assert {"altpo", "idknll", "idkdpo", "undial", "rmu", "whp", "calibrated", "nll", "npo"} <= set(list_objectives())
    for name in ("altpo", "idknll", "idkdpo", "undial", "rmu", "whp", "calibrated"):
        config_cls, trainer_cls = get_method(name)
        assert trainer_cls is ObjectiveTrainer and config_cls.objective_name == name
    with pytest.raises(ValueError, match="registered objectives"):
        SGUConfig(output_dir="x", report_to="none", forget_loss="kl")
    with pytest.raises(ValueError, match="method: undial"):
        AltPOConfig(output_dir="x", report_to="none", forget_loss="undial")


@register_selective_function("test_all_reverse")
def _all_reverse(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
    return -g_f, torch.full_like(g_f, int(Action.REVERSE), dtype=torch.int8)


@pytest.mark.outcome
def test_sgu_receives_the_objectives_gradient_as_g_f(model, tokenizer, splits, sgu_update):
    """One SGD step (lr 1) with a rule that applies -g_f everywhere moves the weights by g_f. For AltPO at the
    start (model = reference, so both deltas are 0) with one alternative, d/dx -(2/b) log sigmoid(b x) at 0 is
    -1: g_f = -grad L = grad log p(alternative) - grad log p(true answer)."""
    row = splits["forget10"][0]
    alternative = row["answer"].rsplit(" ", 1)[0] + " somewhere else."
    forget = datasets.Dataset.from_list([{"question": row["question"], "answer": row["answer"],
                                          "alternatives": [alternative]}])
    retain = splits["retain90"].select(range(1))
    probe = copy.deepcopy(model)

    def logp(answer: str) -> torch.Tensor:
        t = tokenize_qa(tokenizer, row["question"], answer)
        logits = probe(input_ids=torch.tensor([t["input_ids"]])).logits
        return -per_example_nll(logits, torch.tensor([t["labels"]]))[0].sum()

    (logp(alternative) - logp(row["answer"])).backward()
    expected = torch.cat([p.grad.flatten() for p in probe.parameters()])
    update = sgu_update(model, forget, retain, selective_function="test_all_reverse", forget_loss="altpo",
                        pref_beta=0.7, per_device_train_batch_size=1)
    # sgu_update returns minus the parameter change: the update, here -g_f.
    assert torch.allclose(-update, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["altpo", "idknll", "idkdpo", "undial", "rmu", "whp", "calibrated"])
@pytest.mark.outcome
def test_each_objective_moves_the_forget_set_alone_and_under_sgu(name, model, tokenizer, splits, make_config, nll,
                                                                 margin):
    """On its own and as SGU's g_f, every objective changes how the model answers forget questions more than
    retain ones (two epochs on the memorised tiny model)."""
    forget, retain = splits["forget10"], splits["retain90"]
    holdout = splits["holdout10"]
    f0, r0 = nll(model, forget, tokenizer), nll(model, retain, tokenizer)
    for method, extra in ((name, {}), ("sgu", {"forget_loss": name, "selective_function": "sgu_reverse"})):
        m = copy.deepcopy(model)
        config_cls, trainer_cls = get_method(method)
        # whp_alpha 10: on a model that memorised the forget set, the reinforced copy moves few logits, and at
        # alpha 1 under 1 % of the generic labels differ from the true tokens (23 % at 10, on the benchmark)
        cfg = make_config(config_cls, num_train_epochs=2, learning_rate=3e-3, rmu_layer=0, rmu_coeff=100.0,
                          num_alternatives=2, alternatives_tries=8, whp_alpha=10.0, **extra)
        trainer = trainer_cls(m, cfg, forget, retain, processing_class=tokenizer, holdout_dataset=holdout)
        trainer.train()
        df, dr = nll(m, forget, tokenizer) - f0, nll(m, retain, tokenizer) - r0
        margin(f"{method}: forget NLL rise", df, ">", 0.05)
        margin(f"{method}: forget minus retain NLL rise", df - dr, ">", 0.0)


def test_calibrated_needs_holdout_rows(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    config_cls, trainer_cls = get_method("calibrated")
    with pytest.raises(ValueError, match="holdout_dataset"):
        trainer_cls(model, make_config(config_cls), forget, retain, processing_class=tokenizer)


# ---- the row gate: keep / prune / reverse per forget row against a fixed band -------------------------------


def test_row_bands_follow_the_rows_rank_within_the_reference():
    start = torch.tensor([3.0, 1.0, 2.0, 0.5])
    reference = torch.arange(101, dtype=torch.float32)  # quantile level q sits at 100 q
    low, high = row_bands(start, reference, width=0.2)
    # ranks 3, 1, 2, 0 -> levels 0.875, 0.375, 0.625, 0.125, each -/+ 0.1
    assert torch.allclose(low, torch.tensor([77.5, 27.5, 52.5, 2.5]))
    assert torch.allclose(high, torch.tensor([97.5, 47.5, 72.5, 22.5]))
    low, high = row_bands(start, reference, width=1.0)  # the whole width clamps to the reference's range
    assert low.min() >= 0 and high.max() <= 100


def test_row_gate_weights_keep_prune_reverse():
    w = row_gate_weights(torch.tensor([0.5, 1.0, 2.0, 3.0, 3.5]), torch.full((5,), 1.0), torch.full((5,), 3.0))
    assert w.tolist() == [1.0, 0.0, 0.0, 0.0, -1.0]  # the band's ends are inside it


def _row_gate_trainer(model, tokenizer, splits, make_config, **overrides):
    config_cls, trainer_cls = get_method("sgu")
    cfg = make_config(config_cls, **{"forget_loss": "nll", "row_gate": True, **overrides})
    return trainer_cls(model, cfg, splits["forget10"], splits["retain90"], processing_class=tokenizer,
                       holdout_dataset=splits["holdout10"])


def test_row_gate_bands_come_from_the_target_and_the_holdout_rows(model, tokenizer, splits, make_config):
    from sgu_llm.trainers.row_gate import mean_answer_nll

    trainer = _row_gate_trainer(model, tokenizer, splits, make_config)
    forget = trainer.train_dataset.forget
    low, high = torch.tensor(forget["row_gate_low"]), torch.tensor(forget["row_gate_high"])
    start = mean_answer_nll(trainer.task, model, forget, tokenizer.pad_token_id)
    held = prepare_qa_dataset(training_view(splits["holdout10"]), tokenizer, "holdout")
    reference = mean_answer_nll(trainer.task, model, held, tokenizer.pad_token_id)
    assert (low <= high).all() and low.min() >= reference.min() - 1e-6 and high.max() <= reference.max() + 1e-6
    order = torch.argsort(start)  # the row the target knew best is aimed lowest
    assert (low[order].diff() >= 0).all() and (high[order].diff() >= 0).all()
    # a memorised forget set sits far below rows the target never saw: every row starts below its band
    assert (start < low).all()


def test_row_gate_keeps_prunes_and_reverses_each_rows_gradient(model, tokenizer, splits, make_config):
    """Over the "I don't know" objective: the gated loss's gradient is row 0's objective gradient (kept) plus the
    gradient of row 2's true-answer NLL (past its band: pulled back); row 1 (inside its band) adds nothing."""
    trainer = _row_gate_trainer(model, tokenizer, splits, make_config, forget_loss="idknll")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])["forget"]
    with torch.no_grad():
        nll, n = trainer.task.example_losses(model, batch)
    score = nll / n
    batch["row_gate_low"] = score + torch.tensor([1.0, -1.0, -2.0])
    batch["row_gate_high"] = score + torch.tensor([2.0, 1.0, -1.0])
    sizes = {"forget": torch.tensor([float(n.sum()), 3.0])}
    assert trainer.objective.units == "examples"

    def grad(loss_of):
        model.zero_grad()
        loss_of().backward()
        return torch.cat([p.grad.flatten().clone() for p in model.parameters()])

    def one(i):
        return {k: v[i : i + 1] for k, v in batch.items()}

    kept = grad(lambda: trainer.objective.forget_loss(trainer.objective_ctx, model, one(0)).sum() / 3)
    def row_mean_nll(i):
        nll_i, n_i = trainer.task.example_losses(model, one(i))
        return (nll_i / n_i).sum() / 3

    pulled = grad(lambda: row_mean_nll(2))
    gated = grad(lambda: trainer.objective_loss(model, batch, sizes))
    assert torch.allclose(gated, kept + pulled, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(kept, -pulled, atol=1e-3)  # the pull is not minus the objective's gradient


def test_row_gate_needs_holdout_rows(model, tokenizer, splits, make_config):
    config_cls, trainer_cls = get_method("sgu")
    with pytest.raises(ValueError, match="holdout_dataset"):
        trainer_cls(model, make_config(config_cls, row_gate=True), splits["forget10"], splits["retain90"],
                    processing_class=tokenizer)
    with pytest.raises(ValueError, match="row_gate_width"):
        make_config(config_cls, row_gate=True, row_gate_width=0.0)


@pytest.mark.outcome
def test_row_gate_stops_gradient_ascent_at_the_band(model, tokenizer, splits, make_config, nll, margin):
    """Gradient ascent (-g_f everywhere) runs the forget NLL far past rows the target never saw; under the row gate
    the rows stop in their bands: far less overshoot past the band's top."""
    from sgu_llm.trainers.row_gate import mean_answer_nll

    overshoot = {}
    for gate in (False, True):
        m = copy.deepcopy(model)
        trainer = _row_gate_trainer(m, tokenizer, splits, make_config, selective_function="test_all_reverse",
                                    learning_rate=3e-3, num_train_epochs=4)
        forget = trainer.train_dataset.forget
        trainer.args.row_gate = gate
        trainer.train()
        score = mean_answer_nll(trainer.task, m, forget, tokenizer.pad_token_id)
        overshoot[gate] = float((score - torch.tensor(forget["row_gate_high"])).clamp_min(0).mean())
    margin("overshoot past the band without the gate (nats)", overshoot[False], ">", 1.0)
    margin("overshoot with the gate / without", overshoot[True] / overshoot[False], "<", 0.25)
