"""IdkNLL: learn to answer forget questions with "I don't know" (the answer NLL of one such phrasing per row,
a token mean per row). Phrasings: the shipped list (`sgu_llm/data/idk_answers.txt`) or `idk_file`."""

from __future__ import annotations

from sgu_llm.objectives.base import ForgetObjective, sequence_logps, sub_batch, with_idk


class IdkNLLObjective(ForgetObjective):
    name = "idknll"
    answer_sets = ("idk",)

    def prepare_rows(self, ctx, model, forget, retain, holdout):
        return with_idk(ctx, forget)

    def forget_loss(self, ctx, model, batch):
        lp, n = sequence_logps(model, sub_batch(batch, "idk_"))
        ctx.log("loss/idk", -lp.sum(), n.sum())
        return -lp / n.clamp_min(1)
