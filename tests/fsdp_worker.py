"""Worker for tests/test_distributed.py: SGU's selection on FSDP2-sharded gradients against the unsharded path.

torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT.json

Every rank holds a tiny Llama sharded with `fully_shard` (gloo, CPU) and an unsharded copy. One
optimizer step's worth of SGU runs on both: 2 micro-batches per rank (the global batch is split
over ranks), forget and retain backward passes kept apart by `SGUTrainer`'s `StashPairing` (its FSDP2
option: gradients reduce-scattered on every backward). The selected updates of the
sharded path are gathered and compared with the unsharded selection over the whole global batch.
"""

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from sgu_llm.core.losses import per_example_nll
from sgu_llm.data.pairing import pad_batch, prepare_qa_dataset
from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models.tiny import tiny_llama, train_tokenizer
from sgu_llm.selection import SelectionSettings, same_sign, select_gradients
from sgu_llm.trainers.gradient_pairing import StashPairing

MICRO, PER_RANK = 2, 4  # micro-batches per step, examples per rank and micro-batch


def batches(rows, tok, world):
    """[micro][rank] -> padded batch; all ranks build the same list."""
    data = prepare_qa_dataset(rows, tok, "train")
    out, i = [], 0
    for _ in range(MICRO):
        step = []
        for _ in range(world):
            step.append(pad_batch([data[j] for j in range(i, i + PER_RANK)], tok.pad_token_id))
            i += PER_RANK
        out.append(step)
    return out


def loss_of(model, batch, total_tokens, scale):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, _ = per_example_nll(logits, batch["labels"])
    return nll.sum() / total_tokens * scale


def tokens(step_batches):
    return sum(float(b["labels"][:, 1:].ne(-100).sum()) for step in step_batches for b in step)


def two_gradients(model, forget, retain, rank, world, sharded):
    """g_r in param.grad, g_f in the stash, each summed over all micro-batches (and ranks), held apart by
    SGUTrainer's own `StashPairing` (with its FSDP2 option on the sharded model)."""
    params = [p for p in model.parameters() if p.requires_grad]
    totals = {"forget": tokens(forget), "retain": tokens(retain)}
    # FSDP2 averages over ranks when it reduce-scatters: scale by the world size to get the sum.
    scale = world if sharded else 1.0

    def backward(model, inputs, sizes):
        ((split, batch),) = inputs.items()
        loss = loss_of(model, batch, totals[split], scale)
        loss.backward()
        return loss.detach()

    pairing = StashPairing(params, backward, select_window=None, fsdp2=sharded)
    for m in range(MICRO):
        parts = [(forget[m][rank], retain[m][rank])] if sharded else list(zip(forget[m], retain[m]))
        for f_batch, r_batch in parts:
            pairing.forget_pass(model, f_batch, None)
            pairing.retain_pass(model, r_batch, None, last=False)
    return params, pairing.stash


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    splits = synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reference = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    forget = batches(splits["forget10"], tok, world)
    retain = batches(splits["retain90"], tok, world)
    params, stash = two_gradients(model, forget, retain, rank, world, sharded=True)
    ref_params, ref_stash = two_gradients(reference, forget, retain, rank, world, sharded=False)
    assert all(type(p.grad).__name__ == "DTensor" for p in params)

    g_f_full = [full(s) for s in stash]
    g_r_full = [full(p.grad) for p in params]
    grad_diff = max(
        max((a - p.grad).abs().max().item(), (b - s).abs().max().item())
        for a, b, p, s in zip(g_r_full, g_f_full, ref_params, ref_stash)
    )
    results = {"world": world, "grad_max_abs_diff": grad_diff, "numel": sum(p.numel() for p in ref_params)}
    cases = {
        "exact_tensor": SelectionSettings(function="sgu_reverse", max_exact_quantile=2**24),
        "exact_global": SelectionSettings(
            function="sgu_reverse", threshold_scope="global", max_exact_quantile=2**24
        ),
        "sampled_tensor": SelectionSettings(
            function="sgu_reverse", max_exact_quantile=256, quantile_sample_size=2**12
        ),
    }
    for name, settings in cases.items():
        ref_updates, ref_stats = select_gradients([p.grad for p in ref_params], ref_stash, settings, seed=5)
        work_r = [p.grad.clone() for p in params]  # keep the gradients for the next case
        updates, stats = select_gradients(work_r, stash, settings, seed=5, inplace=True)
        assert all(u is w for u, w in zip(updates, work_r))
        diffs = torch.cat([(full(u) - e).abs().flatten() for u, e in zip(updates, ref_updates)])
        tau_d = stats.tau_d.tolist()

        def rank_errors(taus, settings=settings):
            """|rank - q_d| of each threshold within its tensor's exact population, tensors above max_exact."""
            errs = []
            for t, g_r, g_f in zip(taus, [p.grad for p in ref_params], ref_stash):
                if g_r.numel() > settings.max_exact_quantile:
                    pop = (g_r.abs() - g_f.abs())[same_sign(g_r, g_f)]
                    errs.append(abs((pop <= t).double().mean().item() - settings.q_d))
            return errs

        results[name] = {
            "update_max_abs_diff": diffs.max().item(),
            "update_frac_differ_1e-6": (diffs > 1e-6).double().mean().item(),
            "counts_equal": bool(torch.equal(stats.counts, ref_stats.counts)),
            "counts_sharded": stats.counts.sum(0).tolist(),
            "counts_unsharded": ref_stats.counts.sum(0).tolist(),
            "tau_d_max_rel_diff": max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(tau_d, ref_stats.tau_d.tolist())
            ),
            "tau_d_rank_max_err_sharded": max(rank_errors(tau_d), default=0.0),
            "tau_d_rank_max_err_unsharded": max(rank_errors(ref_stats.tau_d.tolist()), default=0.0),
            "sampled_tensors": len(rank_errors(tau_d)),
            "ranks_agree": None,
        }
        # Every rank computed the same thresholds.
        gathered = [None] * world
        dist.all_gather_object(gathered, tau_d)
        results[name]["ranks_agree"] = all(g == tau_d for g in gathered)
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
