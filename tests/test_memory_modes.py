"""SGU's memory modes (bf16 stash, lean per-parameter selection) and the loss-scaler skip."""

import pytest
import torch

import sgu_llm.trainers.sgu as sgu_module
from sgu_llm.trainers import SGUConfig, SGUTrainer


def _held_bytes(trainer) -> int:
    """Gradient bytes alive right now: param.grad plus the stashed forget gradients."""
    params = trainer._params()
    grads = sum(p.grad.nbytes for _, p in params if p.grad is not None)
    return grads + sum(s.nbytes for s in trainer.pairing.stash if s is not None)


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.outcome
def test_lean_selection_gives_the_same_update(model, splits, sgu_update, finetuned_state, accumulation):
    forget, retain = splits["forget10"].select(range(8)), splits["retain90"]
    batch = dict(per_device_train_batch_size=8 // accumulation, gradient_accumulation_steps=accumulation)
    stash = sgu_update(model, forget, retain, **batch)
    model.load_state_dict(finetuned_state)
    lean = sgu_update(model, forget, retain, lean_selection=True, **batch)
    assert stash.abs().sum() > 0
    torch.testing.assert_close(lean, stash, rtol=0, atol=1e-6)


def test_lean_selection_never_holds_two_full_gradients(model, splits, sgu_update, finetuned_state):
    """Peak gradient bytes during selection: ~1x the gradients lean, 2x with the stash, 1.5x with a bf16 stash."""
    forget, retain = splits["forget10"].select(range(8)), splits["retain90"]
    grad_bytes = sum(p.numel() * 4 for p in model.parameters())
    largest = max(p.numel() * 4 for p in model.parameters())
    peaks = {}

    def watch_stash_mode(key):
        def watch(trainer):
            pairing = trainer.pairing
            select = pairing.select

            def measured():
                peaks[key] = _held_bytes(trainer)
                select()

            pairing.select = measured

        return watch

    def watch_lean(trainer):
        pairing = trainer.pairing
        select_one = pairing.select_one

        def measured(i, g_r, g_f):  # called by parameter i's hook, before its stash entry is freed
            peaks["lean"] = max(peaks.get("lean", 0), _held_bytes(trainer))
            return select_one(i, g_r, g_f)

        pairing.select_one = measured

    sgu_update(model, forget, retain, watch=watch_stash_mode("fp32"))
    model.load_state_dict(finetuned_state)
    sgu_update(model, forget, retain, watch=watch_stash_mode("bf16"), stash_dtype="bfloat16")
    model.load_state_dict(finetuned_state)
    sgu_update(model, forget, retain, watch=watch_lean, lean_selection=True)
    assert peaks["fp32"] == 2 * grad_bytes
    assert peaks["bf16"] == grad_bytes + grad_bytes // 2
    # Before each parameter is selected, its g_r and g_f are both alive; every earlier one holds
    # only its update: at most one tensor more than the gradients.
    assert peaks["lean"] <= grad_bytes + largest


@pytest.mark.outcome
def test_bf16_stash_is_bf16_and_close_to_float32(model, splits, sgu_update, finetuned_state, monkeypatch, margin):
    forget, retain = splits["forget10"].select(range(8)), splits["retain90"]
    accumulate = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    exact = sgu_update(model, forget, retain, **accumulate)
    model.load_state_dict(finetuned_state)
    seen = []
    select = sgu_module.select_gradients

    def spy(g_r, g_f, *args, **kwargs):
        seen.extend({(r.dtype, f.dtype) for r, f in zip(g_r, g_f)})
        return select(g_r, g_f, *args, **kwargs)

    monkeypatch.setattr(sgu_module, "select_gradients", spy)
    half = sgu_update(model, forget, retain, stash_dtype="bfloat16", **accumulate)
    assert set(seen) == {(torch.float32, torch.bfloat16)}
    # g_f rounded to 8 mantissa bits: maintained coordinates keep g_r exactly; a few flip at a threshold.
    differ = (exact - half).abs() > 1e-5
    assert differ.any()
    margin("fraction of coordinates that differ", differ.float().mean().item(), "<", 0.02)


def test_lean_selection_rejects_global_quantiles(make_config):
    with pytest.raises(ValueError, match="lean_selection"):
        make_config(SGUConfig, lean_selection=True, threshold_scope="global")
    make_config(SGUConfig, lean_selection=True, threshold_scope="global", tau_d=0.0)  # fixed threshold: fine


def test_bad_stash_dtype(make_config):
    with pytest.raises(ValueError, match="stash_dtype"):
        make_config(SGUConfig, stash_dtype="float8")


@pytest.mark.parametrize("lean", [False, True])
def test_loss_scaler_skip_skips_the_selection(model, tokenizer, small_sets, make_config, lean):
    """An overflowing step (as with fp16) reaches the scaler non-finite: the step and its selection are skipped.

    Accelerate only builds an fp16 GradScaler on GPUs, so the test gives the accelerator a CPU
    GradScaler itself; `scripts/gpu_check.sh` runs real fp16 on a GPU.
    """
    forget, retain = small_sets
    cfg = make_config(SGUConfig, max_steps=3, max_grad_norm=0.0, lean_selection=lean, logging_steps=1)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    compute_loss = trainer.compute_loss
    snapshots = []

    def overflowing(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        if "forget" in inputs and trainer.state.global_step == 1:
            loss = loss * float("inf")
        return loss

    trainer.compute_loss = overflowing
    select = trainer._record

    def record(*args, **kwargs):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        select(*args, **kwargs)

    trainer._record = record
    trainer.train()
    after = [p.detach() for p in model.parameters()]
    assert trainer.selection_skipped_steps == 1
    assert trainer.accelerator.scaler.get_scale() == 512.0  # halved once, by the overflow
    # Step 2 (index 1) overflowed: its parameters equal step 3's starting point.
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[2], after))
    nonfinite = [h["sgu/nonfinite_frac"] for h in trainer.state.log_history if "sgu/nonfinite_frac" in h]
    assert nonfinite == [0.0, 1.0, 0.0]
    assert all(torch.isfinite(p).all() for p in after)
