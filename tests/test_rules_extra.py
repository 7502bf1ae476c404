"""The group, importance (fisher) and GRU rules, pinned on hand-built gradients."""

import pytest
import torch

from sgu_llm.selection import (
    Action,
    SelectionSettings,
    get_selective_function,
    list_selective_functions,
    register_selective_function,
    same_sign,
    select_gradients,
    sgu_select,
)
from sgu_llm.selection.group import sgu_row, sgu_row_reverse
from sgu_llm.selection.gru import gru
from sgu_llm.selection.importance import BETA, MAX_EXACT, fisher, fisher_reverse

M, P, R = int(Action.MAINTAIN), int(Action.PRUNE), int(Action.REVERSE)

# Row 0 conflicts in aggregate (dot = 1 + 1 - 6 < 0) though two of its three coordinates agree in sign;
# row 1 is forget-dominated, row 2 retain-dominated, row 3 balanced (diff exactly 0).
G_R = torch.tensor([[1.0, 1.0, -3.0], [0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
G_F = torch.tensor([[1.0, 1.0, 2.0], [2.0, 2.0, 2.0], [0.1, 0.1, 0.1], [1.0, 1.0, 1.0]])


def _coordinate_taus(g_r, g_f, q_d, q_m):
    """The per-coordinate SGU thresholds (torch.quantile over the same-sign coordinates)."""
    diff = (g_r.float().abs() - g_f.float().abs())[same_sign(g_r, g_f)]
    return torch.quantile(diff, q_d), torch.quantile(-diff, q_m)


def test_rows_are_decided_as_groups():
    update, actions = sgu_row(G_R, G_F, q_d=0.5, q_m=0.5)
    # Non-conflicting rows 1, 2, 3 have diffs (-d, +d, 0): tau_d = 0, so only row 2 passes; row 0 conflicts.
    assert actions.dtype == torch.int8 and actions.shape == G_R.shape
    assert actions.tolist() == [[M] * 3, [P] * 3, [M] * 3, [P] * 3]
    assert torch.equal(update, torch.cat([G_R[:1], torch.zeros(1, 3), G_R[2:3], torch.zeros(1, 3)]))
    # Per coordinate, the agreeing coordinates of row 0 (|r| = |f|) would be pruned.
    _, per_coordinate = sgu_select(G_R[0], G_F[0], tau_d=0.0)
    assert per_coordinate.tolist() == [P, P, M]


def test_row_reverse_reverses_forget_dominated_rows():
    update, actions = sgu_row_reverse(G_R, G_F, q_d=0.5, q_m=0.5, maintain_scale=0.5, reverse_scale=2.0)
    assert actions.tolist() == [[M] * 3, [R] * 3, [M] * 3, [P] * 3]
    expected = torch.cat([0.5 * G_R[:1], -2.0 * G_F[1:2], 0.5 * G_R[2:3], torch.zeros(1, 3)])
    assert torch.equal(update, expected)


def test_rows_along_dim0_of_higher_rank_tensors_and_bf16():
    g_r = G_R.reshape(4, 3, 1).expand(4, 3, 2).to(torch.bfloat16)
    g_f = G_F.reshape(4, 3, 1).expand(4, 3, 2).to(torch.bfloat16)
    update, actions = sgu_row_reverse(g_r, g_f, q_d=0.5, q_m=0.5)
    assert update.dtype == torch.bfloat16 and update.shape == (4, 3, 2) and actions.shape == (4, 3, 2)
    assert [row.unique().tolist() for row in actions] == [[M], [R], [M], [P]]


def test_all_rows_conflicting_maintains_everything():
    g_r, g_f = torch.ones(3, 4), -torch.ones(3, 4)
    for rule in (sgu_row, sgu_row_reverse):
        update, actions = rule(g_r, g_f, q_d=0.9, q_m=0.9)
        assert (actions == M).all() and torch.equal(update, g_r)


@pytest.mark.parametrize("shape", [(200,), (50, 1)])
def test_one_dimensional_tensors_are_per_coordinate_sgu(shape):
    gen = torch.Generator().manual_seed(0)
    g_r, g_f = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    g_r.view(-1)[:5] = 0.0  # zeros count as same sign
    g_f.view(-1)[3] = -1e-30  # conflicts by sign even where the product underflows
    g_r.view(-1)[3] = 1e-30
    tau_d, tau_m = _coordinate_taus(g_r, g_f, 0.7, 0.6)
    for rule, tau in ((sgu_row, None), (sgu_row_reverse, tau_m)):
        update, actions = rule(g_r, g_f, q_d=0.7, q_m=0.6, maintain_scale=0.5, reverse_scale=2.0)
        ref_update, ref_actions = sgu_select(g_r, g_f, tau_d, tau, maintain_scale=0.5, reverse_scale=2.0)
        assert torch.equal(actions, ref_actions) and torch.equal(update, ref_update)
    assert (actions == R).any() and (actions == P).any() and (actions == M).any()


def test_fisher_first_call_is_per_coordinate_sgu_on_magnitudes():
    gen = torch.Generator().manual_seed(1)
    g_r, g_f = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    tau_d, tau_m = _coordinate_taus(g_r, g_f, 0.7, 0.6)
    for rule, tau in ((fisher, None), (fisher_reverse, tau_m)):
        state = {}
        update, actions = rule(g_r, g_f, state=state, q_d=0.7, q_m=0.6, seed=3)
        ref_update, ref_actions = sgu_select(g_r, g_f, tau_d, tau)
        assert torch.equal(actions, ref_actions) and torch.equal(update, ref_update)
        assert state["step"] == 1
        assert torch.equal(state["sq_r"], g_r**2) and torch.equal(state["sq_f"], g_f**2)


def test_fisher_decides_on_history():
    state = {}
    fisher(torch.tensor([10.0, 1.0, 1.0, 1.0]), torch.ones(4), state=state, q_d=0.5)
    # Now coordinate 0's retain gradient is tiny: one batch would prune it, its history maintains it.
    # Coordinate 3 conflicts on the current signs, whatever its history.
    g_r, g_f = torch.tensor([0.1, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, -1.0])
    update, actions = fisher(g_r, g_f, state=state, q_d=0.5)
    assert actions.tolist() == [M, P, P, M]
    assert update.tolist() == pytest.approx([0.1, 0.0, 0.0, 1.0])  # the current g_r, not the history
    _, one_batch = sgu_select(g_r, g_f, tau_d=0.0)  # the per-coordinate median threshold
    assert one_batch.tolist() == [P, P, P, M]
    # The bias-corrected EMA: (BETA (1 - BETA) x1 + (1 - BETA) x2) / (1 - BETA**2).
    assert state["step"] == 2
    x1 = torch.tensor([100.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    x2 = torch.tensor([0.01, 1.0, 1.0, 1.0], dtype=torch.float64)
    expected = (BETA * (1 - BETA) * x1 + (1 - BETA) * x2) / (1 - BETA**2)
    assert state["sq_r"].dtype == torch.float32
    torch.testing.assert_close(state["sq_r"].double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(state["sq_f"], torch.ones(4), rtol=1e-6, atol=0)


def test_fisher_reverse_on_history():
    state = {}
    # Step 1: coordinate 0's forget gradient is large; step 2 it is small but its importance stays high.
    fisher_reverse(torch.ones(5), torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0]), state=state, q_d=0.5, q_m=0.5)
    update, actions = fisher_reverse(
        torch.ones(5),
        torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0]),
        state=state,
        q_d=0.5,
        q_m=0.5,
        reverse_scale=2.0,
    )
    assert actions.tolist() == [R, P, P, P, P]
    assert update.tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0]  # -reverse_scale * the current g_f


def test_fisher_samples_large_populations_reproducibly():
    gen = torch.Generator().manual_seed(2)
    n = 2 * MAX_EXACT + 5
    g_r, g_f = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    first = fisher(g_r, g_f, state={}, q_d=0.9, seed=11)
    again = fisher(g_r, g_f, state={}, q_d=0.9, seed=11)
    assert torch.equal(first[1], again[1])
    agree = same_sign(g_r, g_f)
    kept = (first[1][agree] == M).float().mean().item()
    assert kept == pytest.approx(0.1, abs=0.01)  # the sampled 0.9 quantile is close to the exact one


def test_fisher_through_select_gradients_keeps_state():
    settings = SelectionSettings(function="fisher", q_d=0.5)
    states = [{}, {}]
    steps = [
        ([torch.tensor([10.0, 1.0, 1.0, 1.0]), torch.ones(2, 2)], [torch.ones(4), torch.ones(2, 2)]),
        ([torch.tensor([0.1, 1.0, 1.0, 1.0]), torch.ones(2, 2)], [torch.ones(4), torch.ones(2, 2)]),
    ]
    for seed, (g_r, g_f) in enumerate(steps):
        updates, stats = select_gradients(g_r, g_f, settings, seed=seed, states=states)
    assert [s["step"] for s in states] == [2, 2]
    assert updates[0].tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert stats.counts.tolist() == [[3, 1, 0], [4, 0, 0]]
    # Without states every call starts afresh: the tiny current gradient is pruned.
    updates, _ = select_gradients(*steps[1], settings)
    assert updates[0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_gru_projects_the_ascent_off_the_retain_average():
    gen = torch.Generator().manual_seed(3)
    state = {}
    g1 = torch.randn(64, generator=gen)
    g2 = g1 + 0.3 * torch.randn(64, generator=gen)
    g_f = g1 + 0.1 * torch.randn(64, generator=gen)  # u = -g_f points against the retain direction
    gru(g1, g_f, state=state)
    update, actions = gru(g2, g_f, state=state, maintain_scale=0.5)
    m = (BETA * g1.double() + g2.double()) / (1 + BETA)  # the bias-corrected EMA after two steps
    torch.testing.assert_close(state["mean_r"].double(), m, rtol=1e-5, atol=1e-6)
    assert torch.dot(-g_f.double(), m) < 0
    forget = (update - 0.5 * g2).double()
    assert abs(torch.dot(forget, m).item()) < 1e-6 * forget.norm().item() * m.norm().item()
    assert set(actions.unique().tolist()) <= {M, R}


def test_gru_first_step_projects_on_g_r_itself():
    g_r, g_f = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    update, actions = gru(g_r, g_f, state={})
    # u = (-1, -1), <u, g_r> = -1: u - (-1 / 1) g_r = (0, -1).
    assert update.tolist() == [1.0, -1.0]
    assert actions.tolist() == [M, R]  # |u_1| = 1 > |g_r_1| = 0; |u_0| = 0 < 1


def test_gru_without_conflict_adds_the_ascent():
    g_r = torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)
    g_f = torch.tensor([-1.0, 1.0, 3.0], dtype=torch.bfloat16)  # <-g_f, g_r> = 1 + 2 - 1.5 > 0
    update, actions = gru(g_r, g_f, state={}, maintain_scale=0.5)
    assert update.dtype == torch.bfloat16
    assert update.tolist() == (0.5 * g_r - g_f).tolist()
    assert actions.tolist() == [R, M, R]


def test_gru_zero_retain_gradient_does_not_divide_by_zero():
    update, _ = gru(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]), state={})
    assert update.tolist() == [-1.0, -2.0, -3.0]


def test_registry_names_and_extras():
    names = set(list_selective_functions())
    assert {"sgu_row", "sgu_row_reverse", "fisher", "fisher_reverse", "gru"} <= names
    assert get_selective_function("sgu_row").extras == ("q",)
    assert get_selective_function("fisher_reverse").extras == ("state", "q", "seed")
    assert get_selective_function("gru").extras == ("state", "group")
    assert all(get_selective_function(n).per_tensor for n in ("sgu_row", "fisher", "gru", "pcgrad"))
    # gru reduces its inner products over the shards itself (tests/test_distributed.py runs it on them)
    assert [n for n in ("sgu_row", "fisher", "gru", "pcgrad") if get_selective_function(n).runs_sharded] == ["gru"]
    assert not any(get_selective_function(n).per_tensor for n in ("sgu", "sgu_reverse", "sign_conflict", "sago"))
    with pytest.raises(ValueError, match="extras may name"):
        register_selective_function("test_bad_extra", extras=("state", "bogus"))
    with pytest.raises(TypeError):
        register_selective_function("test_fused_flag", fused=True)  # the flag is gone: a rule is never replaced
    assert not {"test_bad_extra", "test_fused_flag"} & set(list_selective_functions())


def test_a_user_rule_is_the_one_that_runs():
    """A user rule registered with the SGU rule's thresholds runs as written, with the fused kernels on."""
    from sgu_llm.selection import SelectionSettings, select_gradients

    @register_selective_function("test_user_double", thresholds=("d",))
    def double(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
        return 2 * g_r, torch.ones_like(g_r, dtype=torch.int8)

    g_r, g_f = torch.randn(1000), torch.randn(1000)
    settings = SelectionSettings(function="test_user_double", fused=True)
    updates, _ = select_gradients([g_r.clone()], [g_f], settings)
    assert torch.equal(updates[0], 2 * g_r)


def test_a_per_tensor_rule_is_refused_on_shards(monkeypatch):
    """On FSDP2 shards a per-tensor rule would see part of each tensor: refused, naming what runs there."""
    from sgu_llm.selection import SelectionSettings, select_gradients, selector

    monkeypatch.setattr(selector, "local_shards", lambda grads, shards=None: (grads, [2 * g.numel() for g in grads],
                                                                             object()))
    with pytest.raises(ValueError, match="per-tensor.*FSDP2"):
        select_gradients([torch.randn(4)], [torch.randn(4)], SelectionSettings(function="pcgrad"))


def test_non_finite_gradients_do_not_poison_the_history():
    state = {}
    fisher(torch.tensor([2.0, 1.0]), torch.ones(2), state=state, q_d=0.5)
    before = {k: v.clone() for k, v in state.items() if k != "step"}
    states = [state]
    settings = SelectionSettings(function="fisher", q_d=0.5)
    updates, _ = select_gradients(
        [torch.tensor([float("inf"), 1.0])], [torch.ones(2)], settings, states=states
    )
    assert not torch.isfinite(updates[0]).all()  # a loss scaler skips this step...
    assert state["step"] == 2
    assert all(torch.equal(state[k], v) for k, v in before.items())  # ...and the history is intact
    gru_state = {}
    gru(torch.tensor([1.0, 2.0]), torch.ones(2), state=gru_state)
    mean = gru_state["mean_r"].clone()
    update, _ = gru(torch.tensor([float("nan"), 2.0]), torch.ones(2), state=gru_state)
    assert torch.equal(gru_state["mean_r"], mean) and not torch.isfinite(update).all()


def test_retain_subspace_projects_the_ascent_off_the_recent_retain_gradients():
    from sgu_llm.selection.subspace import SUBSPACE_SIZE, retain_subspace

    g_f = torch.tensor([1.0, 2.0, 3.0, 4.0])
    state = {}
    retain_subspace(torch.tensor([1.0, 0.0, 0.0, 0.0]), g_f, state=state)
    update, actions = retain_subspace(torch.tensor([1.0, 1.0, 0.0, 0.0]), g_f, state=state, maintain_scale=0.5)
    # u = -g_f with its part in span(e1, e2) removed: (0, 0, -3, -4); plus 0.5 * g_r
    assert torch.allclose(update, torch.tensor([0.5, 0.5, -3.0, -4.0]), atol=1e-6)
    assert actions.tolist() == [int(Action.MAINTAIN)] * 2 + [int(Action.REVERSE)] * 2
    # unlike gru (one averaged direction), both stored directions stay protected: GRU's projection on their
    # average leaves a component along e1 - e2
    gru_update, _ = gru(torch.tensor([1.0, 1.0, 0.0, 0.0]), g_f, state={"step": 1, "mean_r": torch.tensor([1.0, 0, 0, 0])})
    assert abs(float(gru_update[0] - gru_update[1])) > 0.1
    # the buffer keeps the last SUBSPACE_SIZE gradients; a non-finite one is not stored
    for _ in range(SUBSPACE_SIZE + 3):
        retain_subspace(torch.tensor([0.0, 0.0, 1.0, 0.0]), g_f, state=state)
    assert state["filled"] == SUBSPACE_SIZE and not state["retain_grads"][:, :2].any()
    retain_subspace(torch.tensor([float("nan"), 0.0, 0.0, 0.0]), g_f, state=state)
    assert torch.isfinite(state["retain_grads"]).all()
    assert get_selective_function("retain_subspace").per_tensor
