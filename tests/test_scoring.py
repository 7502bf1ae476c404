"""The one scorer against a plain full-softmax reference, and its token-budget batches."""

import numpy as np
import pytest
import torch

from sgu_llm.data.pairing import pad_batch
from sgu_llm.data.prompts import tokenize_qa
from sgu_llm.evaluation import metrics as M
from sgu_llm.evaluation import scoring
from sgu_llm.models.tiny import tiny_llama, train_tokenizer

TEXTS = [f"Question: who wrote book {i}?\nAnswer: author number {i} wrote it in {1900 + i}" for i in range(40)]


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer(TEXTS, vocab_size=120)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3).eval()
    rows = [
        tokenize_qa(tok, f"who wrote book {i}?", f"author number {i} wrote it" + " again" * (i % 7))
        for i in range(23)
    ]
    return model, tok, rows


def reference(model, rows, pad):
    """Full (batch, length, vocabulary) float64 log-softmax over one padded batch: the plain way."""
    batch = pad_batch(rows, pad)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp_all = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = batch["labels"][:, 1:]
    out = {"nll": [], "mink": [], "minkpp": [], "correct": []}
    for b in range(len(rows)):
        v = tgt[b].ne(-100)
        la, t = logp_all[b][v], tgt[b][v]
        lp = la.gather(-1, t[:, None]).squeeze(-1)
        p = la.exp()
        mu = (p * la).sum(-1)
        sigma = ((p * la.square()).sum(-1) - mu.square()).sqrt()
        out["nll"].append(-lp.mean().item())
        out["mink"].append(M.min_k(lp.numpy(), 0.4))
        out["minkpp"].append(M.min_k(((lp - mu) / sigma).numpy(), 0.4))
        out["correct"].append(int(la.argmax(-1).eq(t).sum()))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("path", ["hidden_states", "full_logits"])
def test_scorer_matches_full_softmax_reference(tiny, monkeypatch, path):
    model, tok, rows = tiny
    if path == "full_logits":  # models with soft-capped or scaled logits take this path
        monkeypatch.setattr(scoring, "_head_from_hidden", lambda model: None)
    ref = reference(model, rows, tok.pad_token_id)
    # A small budget forces many batches, reordered by length; the output keeps the rows' order.
    got = scoring.score_rows(
        model, rows, tok.pad_token_id, token_budget=90, token_stats=True, accuracy=True, min_k_fraction=0.4
    )
    np.testing.assert_allclose(got["nll"], ref["nll"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["mink"], ref["mink"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["minkpp"], ref["minkpp"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["correct"], ref["correct"])
    assert got["tokens"].sum() == sum(int(np.sum(np.array(r["labels"][1:]) != -100)) for r in rows)


def test_output_layer_chunks_do_not_change_scores(tiny):
    model, tok, rows = tiny
    batch = pad_batch(rows[:6], tok.pad_token_id)
    args = (model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    whole = scoring.answer_token_scores(*args, token_stats=True, chunk_tokens=10_000)
    chunked = scoring.answer_token_scores(*args, token_stats=True, chunk_tokens=5)
    torch.testing.assert_close(whole["logp"], chunked["logp"])
    torch.testing.assert_close(whole["z"], chunked["z"], rtol=1e-4, atol=1e-5)  # float32 matmul blocking


def test_token_budget_batches_cover_every_row_once_within_budget():
    lengths = [5, 40, 12, 12, 3, 40, 7, 100]
    batches = scoring.token_budget_batches(lengths, token_budget=80, max_rows=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80
    assert batches[0] == [7]  # longer than the budget: alone


def test_frozen_prefix_reuses_the_lower_layers_exactly(tiny):
    """Scoring through the recorded lower layers gives the full pass's numbers, before and after the
    trainable layer changes; a changed frozen weight drops the recorded states; a trainable first layer
    turns it off."""
    from sgu_llm.evaluation.prefix import FrozenPrefix, first_trainable_layer

    _, tok, rows = tiny
    model = tiny_llama(tok, hidden_size=32, num_layers=3, num_heads=2, seed=4).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(".layers.2." in name or "model.norm" in name)
    assert first_trainable_layer(model) == 2
    pad, prefix = tok.pad_token_id, FrozenPrefix()

    def score(reuse):
        with prefix.active(model) if reuse else torch.no_grad():
            return scoring.score_rows(model, rows, pad, token_budget=90)["nll"]

    full = score(False)
    np.testing.assert_array_equal(score(True), full)  # records
    assert prefix.hits == 0 and prefix.misses > 0
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(1.5)  # what an unlearning step changes
    after = score(False)
    assert not np.allclose(after, full)
    np.testing.assert_allclose(score(True), after, rtol=1e-6, atol=1e-6)
    assert prefix.hits == prefix.misses
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(0.5)  # a frozen weight changed: record again
    hits = prefix.hits
    np.testing.assert_allclose(score(True), score(False), rtol=1e-6, atol=1e-6)
    assert prefix.hits == hits
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    assert first_trainable_layer(model) is None
