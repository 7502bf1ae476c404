"""The selection rules, pinned on hand-computed cases."""

import pytest
import torch

from sgu_llm.selection import (
    Action,
    SelectionSettings,
    get_selective_function,
    list_selective_functions,
    pcgrad,
    register_selective_function,
    select_gradients,
    sgu_select,
    sign_conflict,
)

# Equalities of runs and measured tolerances: .ci/run checks them under another machine's CPU kernels too.
pytestmark = pytest.mark.outcome

M, P, R = int(Action.MAINTAIN), int(Action.PRUNE), int(Action.REVERSE)


def test_action_codes():
    assert (Action.PRUNE, Action.MAINTAIN, Action.REVERSE) == (0, 1, 2)


def test_seed_rule_hand_computed():
    #            conflict  r dom.  tie(=tau_d)  f dom.   f dom. tie(=tau_m)  same, small diff
    g_r = torch.tensor([2.0, 3.0, 2.0, 1.0, 1.0, 1.5])
    g_f = torch.tensor([-0.5, 1.0, 1.0, 4.0, 3.0, 1.0])
    update, actions = sgu_select(g_r, g_f, tau_d=1.0)
    assert actions.dtype == torch.int8
    assert actions.tolist() == [M, M, P, P, P, P]
    assert update.tolist() == [2.0, 3.0, 0.0, 0.0, 0.0, 0.0]

    update, actions = sgu_select(g_r, g_f, tau_d=1.0, tau_m=2.0)
    # |g_f| - |g_r| = 3 > 2 reverses; = 2 (a tie) does not: both comparisons are strict.
    assert actions.tolist() == [M, M, P, R, P, P]
    assert update.tolist() == [2.0, 3.0, 0.0, -4.0, 0.0, 0.0]


def test_negative_gradients_and_sign_agreement():
    g_r = torch.tensor([-3.0, -1.0, -1.0])
    g_f = torch.tensor([-1.0, -4.0, 2.0])
    update, actions = sgu_select(g_r, g_f, tau_d=1.0, tau_m=2.0)
    # both negative and |g_r| dominates -> maintain; both negative and |g_f| dominates -> reverse (+4); conflict.
    assert actions.tolist() == [M, R, M]
    assert update.tolist() == [-3.0, 4.0, -1.0]


def test_zeros_count_as_same_sign():
    # g_r * g_f = 0 >= 0: the magnitude tests decide.
    g_r = torch.tensor([0.0, 0.0, 2.0, 0.0])
    g_f = torch.tensor([0.0, 3.0, 0.0, -0.5])
    update, actions = sgu_select(g_r, g_f, tau_d=0.0, tau_m=0.0)
    # (0,0): diff 0 is not > 0 -> prune (not reverse either); (0,3): reverse -> -3; (2,0): maintain; (0,-0.5): reverse.
    assert actions.tolist() == [P, R, M, R]
    assert update.tolist() == [0.0, -3.0, 2.0, 0.5]
    # With a negative tau_d, a (0, 0) coordinate is "maintained" with a zero update.
    update, actions = sgu_select(torch.zeros(2), torch.zeros(2), tau_d=-1.0)
    assert actions.tolist() == [M, M] and update.tolist() == [0.0, 0.0]


def test_conflict_does_not_underflow():
    # The product of these is 0 in float32, but the signs do conflict.
    g_r = torch.tensor([1e-30])
    g_f = torch.tensor([-1e-30])
    assert (g_r * g_f).item() == 0.0
    _, actions = sgu_select(g_r, g_f, tau_d=10.0)
    assert actions.tolist() == [M]


def test_scales_apply_per_action():
    g_r = torch.tensor([1.0, 1.0])
    g_f = torch.tensor([-1.0, 5.0])
    update, _ = sgu_select(g_r, g_f, tau_d=1.0, tau_m=1.0, maintain_scale=0.5, reverse_scale=2.0)
    assert update.tolist() == [0.5, -10.0]


def test_tensor_thresholds_broadcast_and_bf16():
    g_r = torch.tensor([3.0, 1.0], dtype=torch.bfloat16)
    g_f = torch.tensor([1.0, 1.0], dtype=torch.bfloat16)
    update, actions = sgu_select(g_r, g_f, tau_d=torch.tensor(1.0))
    assert update.dtype == torch.bfloat16
    assert actions.tolist() == [M, P]


def test_sign_conflict_rule():
    g_r = torch.tensor([1.0, 1.0, -2.0, 0.0])
    g_f = torch.tensor([-1.0, 1.0, 1.0, 1.0])
    update, actions = sign_conflict(g_r, g_f)
    assert actions.tolist() == [M, P, M, P]
    assert update.tolist() == [1.0, 0.0, -2.0, 0.0]


def test_pcgrad_projects_only_when_agreeing():
    g_r = torch.tensor([1.0, 1.0])
    g_f = torch.tensor([1.0, 0.0])
    update, actions = pcgrad(g_r, g_f)
    assert torch.allclose(update, torch.tensor([0.0, 1.0]))
    assert torch.dot(update, g_f).abs() < 1e-6  # no first-order change of the forget loss
    assert (actions == M).all()
    # Conflicting directions keep g_r untouched.
    update, _ = pcgrad(g_r, torch.tensor([-1.0, 0.0]))
    assert torch.equal(update, g_r)
    # A zero forget gradient leaves g_r unchanged (no division by zero).
    update, _ = pcgrad(g_r, torch.zeros(2))
    assert torch.equal(update, g_r)


def test_registry_contents_and_errors():
    assert {"sgu", "sgu_reverse", "sign_conflict", "pcgrad"} <= set(list_selective_functions())
    assert get_selective_function("SGU").uses_tau_d and not get_selective_function("sgu").uses_tau_m
    assert get_selective_function("sgu_reverse").uses_tau_m
    with pytest.raises(ValueError, match="unknown selective function 'nope'.*registered"):
        get_selective_function("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_selective_function("sgu")(lambda *a, **k: None)


def test_user_registration_is_one_decorator():
    @register_selective_function("test_half_retain")
    def half(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
        return 0.5 * g_r, torch.full_like(g_r, M, dtype=torch.int8)

    updates, stats = select_gradients(
        [torch.ones(4)], [torch.ones(4)], SelectionSettings(function="test_half_retain")
    )
    assert updates[0].tolist() == [0.5] * 4
    assert stats.summary()["sgu/maintain_frac"] == 1.0


def test_select_gradients_statistics():
    g_r = [torch.tensor([1.0, 3.0, 1.0, 1.0]), torch.tensor([[2.0, -1.0]])]
    g_f = [torch.tensor([-1.0, 1.0, 1.0, 4.0]), torch.tensor([[2.0, 1.0]])]
    updates, stats = select_gradients(
        g_r, g_f, SelectionSettings(function="sgu_reverse", tau_d=1.0, tau_m=2.0)
    )
    assert [u.shape for u in updates] == [torch.Size([4]), torch.Size([1, 2])]
    assert stats.counts.tolist() == [[1, 2, 1], [1, 1, 0]]
    s = stats.summary()
    assert s["sgu/maintain_frac"] == pytest.approx(3 / 6)
    assert s["sgu/reverse_frac"] == pytest.approx(1 / 6)
    assert s["sgu/conflict_frac"] == pytest.approx(2 / 6)
    r, f = torch.cat([g.flatten() for g in g_r]), torch.cat([g.flatten() for g in g_f])
    assert s["sgu/grad_cosine"] == pytest.approx((r @ f / r.norm() / f.norm()).item(), rel=1e-5)
    assert s["sgu/tau_d"] == 1.0 and s["sgu/tau_m"] == 2.0


def test_fixed_threshold_overrides_quantile():
    g_r, g_f = [torch.tensor([5.0, 2.0, 1.5])], [torch.tensor([1.0, 1.0, 1.0])]
    _, quantile_stats = select_gradients(g_r, g_f, SelectionSettings(q_d=0.5))
    assert quantile_stats.tau_d.item() == pytest.approx(1.0)  # median of [4, 1, 0.5]
    _, fixed = select_gradients(g_r, g_f, SelectionSettings(tau_d=0.25))
    assert fixed.counts.tolist() == [[0, 3, 0]]


@pytest.mark.parametrize("function", ["sgu", "sgu_reverse", "sign_conflict"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_compiled_selection_equals_the_rule(function, dtype):
    """The one-pass kernels (compiled) give the registered rule's update and statistics, in place."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 48), (300,), (7, 3, 5)]
    g_r = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    g_f = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    g_r[1][:10] = 0.0  # zeros count as same sign
    settings = SelectionSettings(function=function, q_d=0.7, q_m=0.6)
    ref_updates, ref = select_gradients(
        g_r, g_f, SelectionSettings(function=function, q_d=0.7, q_m=0.6, fused=False)
    )
    work = [r.clone() for r in g_r]
    updates, stats = select_gradients(work, g_f, settings, inplace=True)
    for u, w, e in zip(updates, work, ref_updates):
        assert u is w and u.dtype == dtype  # written into g_r, nothing allocated
        torch.testing.assert_close(u, e, rtol=0, atol=0)
    assert torch.equal(stats.counts, ref.counts) and torch.equal(stats.conflicts, ref.conflicts)
    torch.testing.assert_close(stats.dot, ref.dot)
    assert stats.summary() == pytest.approx(ref.summary(), rel=1e-5, abs=1e-6)
    if function == "sgu_reverse":
        assert stats.counts[:, 2].sum() > 0  # the reverse branch was exercised
    # Not in place: the inputs stay as they were.
    before = [r.clone() for r in g_r]
    select_gradients(g_r, g_f, settings)
    assert all(torch.equal(a, b) for a, b in zip(g_r, before))


def test_kernel_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    from sgu_llm.selection.kernel import Kernel

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    kernel = Kernel(lambda x: x + 1)
    with caplog.at_level("WARNING", logger="sgu_llm.selection.kernel"):
        assert kernel(torch.ones(2)).tolist() == [2.0, 2.0]
        assert kernel(torch.ones(2)).tolist() == [2.0, 2.0]
    assert len(caplog.records) == 1 and "Running it eagerly from now on" in caplog.records[0].getMessage()
    assert "torch.compile failed (RuntimeError: no C++ compiler)" in caplog.records[0].getMessage()
    assert kernel.mode == "eager"


def miscompiled(fn, **kwargs):
    """What inductor's cached AVX-512 code, rebuilt for AVX2, did to the SGU kernel: the rule on half the lanes."""

    def run(g_r, g_f, *rest):
        stats = fn(g_r, g_f, *rest)
        g_r.view(-1, 1)[1::2] = 0.0 if g_r.numel() > 1 else g_r  # every other coordinate pruned
        return stats

    return run


def test_guard_catches_a_compiled_kernel_that_disagrees_with_the_rule(monkeypatch, caplog):
    """A compiled SGU kernel that computes a wrong update is caught on the probe, before it touches a real
    gradient: the real call gets the eager rule's update, with one warning that says why."""
    from sgu_llm.selection.fused import _select_, _select_close, _select_probes
    from sgu_llm.selection.kernel import Kernel

    monkeypatch.setattr(torch, "compile", miscompiled)
    kernel = Kernel(_select_, probe=_select_probes, close=_select_close)
    gen = torch.Generator().manual_seed(0)
    g_r, g_f = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    tau = torch.tensor(0.5)
    expected = g_r.clone()
    expected_stats = _select_(expected, g_f, tau, tau, 1.0, 1.0)
    with caplog.at_level("WARNING", logger="sgu_llm.selection.kernel"):
        for _ in range(2):
            got = g_r.clone()
            stats = kernel(got, g_f, tau, tau, 1.0, 1.0)
            assert torch.equal(got, expected) and torch.equal(stats, expected_stats)
    message = caplog.records[0].getMessage()
    assert len(caplog.records) == 1 and "disagrees with the eager function on a probe" in message
    assert "output 1:" in message and "values differ" in message  # the update written into g_r
    assert "CPU capability" in message and kernel.mode == "eager" and kernel.calls == {"compiled": 0, "eager": 2}
    # The same kernel left alone is trusted and used.
    monkeypatch.undo()
    trusted = Kernel(_select_, probe=_select_probes, close=_select_close)
    got = g_r.clone()
    trusted(got, g_f, tau, tau, 1.0, 1.0)
    assert torch.equal(got, expected)
    # Compiled, unless inductor cannot build C++ here at all (ATEN_CPU_CAPABILITY=default: it emits vector code
    # without its header), or this machine's compiled code is wrong: then torch.compile's output, checked here
    # without the guard, differs from the rule on a probe.
    if trusted.mode != "compiled" and "torch.compile failed" not in trusted.fallback:
        assert "disagrees with the eager function on a probe" in trusted.fallback, trusted.fallback
        compiled = torch.compile(_select_, dynamic=True)
        wrong = []
        for args in _select_probes((g_r, g_f, tau, tau, 1.0, 1.0)):
            eager_r, compiled_r = args[0].clone(), args[0].clone()
            eager_stats = _select_(eager_r, *args[1:])
            compiled_stats = compiled(compiled_r, *args[1:])
            same_update = torch.equal(eager_r.nan_to_num(7.0), compiled_r.nan_to_num(7.0))
            wrong.append(not same_update or not torch.equal(eager_stats[:3], compiled_stats[:3]))
        assert any(wrong), "the guard rejected a compiled kernel that agrees with the rule on every probe"


def reproducer(r, f, tau_d, tau_m):
    """The dozen lines that inductor computed wrongly under AVX2 kernels when its cache held their AVX-512 code
    (torch 2.13.0, gcc 12): the rule's masks with 0-d thresholds, the update and the masks' float sums."""
    conflict = ((r > 0) & (f < 0)) | ((r < 0) & (f > 0))
    diff = r.abs() - f.abs()
    maintain = conflict | (diff > tau_d)
    reverse = ~maintain & (-diff > tau_m)
    update = torch.where(maintain, r, torch.where(reverse, -f, 0.0))
    return update, maintain.float().sum(), reverse.float().sum()


def test_the_reproducer_is_right_or_caught_on_this_machine(caplog):
    """On a machine where the compiled reproducer is wrong the guard sees it and the caller still gets the
    eager numbers; where it is right, it runs compiled. Either way the answer is the eager one."""
    from sgu_llm.selection.kernel import Kernel

    gen = torch.Generator().manual_seed(0)
    r, f = torch.randn(1_000_003, generator=gen), torch.randn(1_000_003, generator=gen)
    args = (r, f, torch.tensor(0.5), torch.tensor(0.4))
    expected = reproducer(*args)
    kernel = Kernel(reproducer)  # probes on the call's own arguments
    try:
        raw = kernel.check(args)  # the compiled code alone, against eager
    except Exception as err:  # no compiled code on this machine (ATEN_CPU_CAPABILITY=default)
        raw = [f"does not compile: {err}"]
    with caplog.at_level("WARNING", logger="sgu_llm.selection.kernel"):
        got = kernel(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    warned = [r for r in caplog.records if r.name == "sgu_llm.selection.kernel" and r.levelname == "WARNING"]
    assert (kernel.mode == "eager") == bool(raw) == bool(warned), (raw, kernel.mode)


KERNEL_IN_A_PROCESS = """
import json, torch
from sgu_llm.selection.fused import _select_, _select_close, _select_probes
from sgu_llm.selection.kernel import Kernel
kernel = Kernel(_select_, probe=_select_probes, close=_select_close)
g_r, g_f = torch.randn(5000, generator=torch.Generator().manual_seed(0)).chunk(2)
kernel(g_r.clone(), g_f, torch.tensor(0.5), torch.tensor(0.5), 1.0, 1.0)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "mode": kernel.mode,
                  "fallback": kernel.fallback}))
"""


def test_kernels_compiled_under_two_cpu_kernel_sets_share_one_inductor_cache(tmp_path):
    """Inductor's on-disk cache key leaves out the vector ISA it generated C++ for: a process under AVX2 kernels
    that shares the cache with one under AVX-512 got the AVX-512 code built for AVX2 (half the lanes; the
    probe caught it) and the reverse aborted. Keyed by the ISA (`isa_keyed`), each kernel set compiles its own
    and is trusted. On a machine whose kernels are AVX2 the two processes differ in nothing and pass alike."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    avx2 = {**env, "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    seen = []
    for run_env in (env, avx2, env):  # the native kernel set, AVX2 from its cache, native again after AVX2
        out = subprocess.run([sys.executable, "-c", KERNEL_IN_A_PROCESS], env=run_env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        seen.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if seen[0]["fallback"] and "torch.compile failed" in seen[0]["fallback"]:
        pytest.skip(f"inductor cannot build C++ here: {seen[0]['fallback']}")
    assert seen[1]["capability"] == "AVX2"
    assert all(s["mode"] == "compiled" and s["fallback"] is None for s in seen), seen
