"""Who's Harry Potter: fine-tune on generic labels.

A reinforced model (a copy of the starting model trained `whp_reinforce_epochs` more epochs on the forget
set) boosts the forget set's own tokens. At every answer position of a forget row the generic prediction is
argmax(v_base - whp_alpha * ReLU(v_reinforced - v_base)) (teacher-forced on the true answer); the objective
is the NLL of those generic labels (a token mean). The labels are computed once before unlearning and cached
by the model's weights, the rows and the settings.
"""

from __future__ import annotations

import copy

import torch

from sgu_llm.core.cache import cached_json, default_cache_dir, fingerprint, weights_fingerprint
from sgu_llm.core.losses import IGNORE_INDEX, generic_logits, per_example_nll
from sgu_llm.data.pairing import pad_batch
from sgu_llm.objectives.base import ForgetObjective

BATCH = 16


def reinforced_copy(model, rows: list[dict], pad_id: int, epochs: int, lr: float, seed: int):
    """A copy of `model` trained `epochs` more epochs on `rows` (answer NLL, AdamW, batch 16, seeded order)."""
    reinforced = copy.deepcopy(model).train()
    params = [p for p in reinforced.parameters() if p.requires_grad] or list(reinforced.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    device = next(reinforced.parameters()).device
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        for start in range(0, len(order), BATCH):
            batch = {k: v.to(device) for k, v in pad_batch([rows[i] for i in order[start : start + BATCH]], pad_id).items()}
            logits = reinforced(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, n = per_example_nll(logits, batch["labels"])
            loss = nll.sum() / n.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return reinforced.eval()


@torch.no_grad()
def generic_labels(model, reinforced, rows: list[dict], pad_id: int, alpha: float) -> list[list[int]]:
    """Per row, `labels` with every answer token replaced by the generic prediction at its position."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        batch = {k: v.to(device) for k, v in pad_batch(chunk, pad_id).items()}
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        generic = generic_logits(model(**kw).logits.float(), reinforced(**kw).logits.float(), alpha)
        predicted = generic[:, :-1].argmax(-1)  # position t predicts token t + 1
        labels = batch["labels"].clone()
        answer = labels[:, 1:].ne(IGNORE_INDEX)
        labels[:, 1:][answer] = predicted[answer]
        out += [lab[: len(r["input_ids"])].tolist() for lab, r in zip(labels.cpu(), chunk)]
    return out


class WHPObjective(ForgetObjective):
    name = "whp"
    units = "tokens"

    def prepare_tokenized(self, ctx, model, forget):
        if "generic_labels" in forget.column_names:
            return forget
        a = self.args
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in forget]
        pad = ctx.tokenizer.pad_token_id
        was_training = model.training
        model.eval()

        def compute():
            reinforced = reinforced_copy(model, rows, pad, a.whp_reinforce_epochs, a.whp_reinforce_learning_rate, a.seed)
            return generic_labels(model, reinforced, rows, pad, a.whp_alpha)

        material = {
            "format": 1,
            "model": weights_fingerprint(model),
            "rows": fingerprint(rows),
            "settings": [a.whp_alpha, a.whp_reinforce_epochs, a.whp_reinforce_learning_rate, a.seed],
        }
        labels = cached_json(ctx.cache_dir or default_cache_dir(), "whp_labels", material, compute)
        model.train(was_training)
        return forget.add_column("generic_labels", labels)

    def forget_loss(self, ctx, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n = per_example_nll(logits, batch["generic_labels"])
        ctx.log("loss/whp", nll.sum(), n.sum())
        return nll
