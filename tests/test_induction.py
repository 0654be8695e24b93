"""Tests for seedscope.induction against hand-built patterns and planted phase changes."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from seedscope import induction as ind

matplotlib.use("Agg")

# dense early, sparse late, like the CRFM / mini-suite schedules
CRFM_LIKE = np.array(
    sorted(
        set(range(0, 101, 10))
        | set(range(150, 2001, 50))
        | set(range(2100, 20001, 100))
        | set(range(21000, 400001, 1000))
    )
)
MINI_STEPS = np.array(
    sorted(set(range(0, 101, 10)) | set(range(120, 601, 20)) | set(range(650, 1501, 50)))
)


def _induction_pattern(half: int) -> np.ndarray:
    """A perfect induction head on a [1 + 2*half] repeated sequence: second-copy tokens attend
    to the token after their earlier occurrence; everything else attends to BOS."""
    n = 1 + 2 * half
    p = np.zeros((n, n))
    p[:, 0] = 1.0
    for t in range(half + 1, n):
        p[t] = 0.0
        p[t, t - half + 1] = 1.0
    return p


def _prev_token_pattern(n: int) -> np.ndarray:
    p = np.zeros((n, n))
    p[0, 0] = 1.0
    for t in range(1, n):
        p[t, t - 1] = 1.0
    return p


def test_act_name_is_transformerlens_style():
    assert ind.act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    with pytest.raises(ind.SeedscopeError):
        ind.act_name("patern", 0)


def test_repeated_random_tokens_shape_and_repeat():
    seqs = ind.repeated_random_tokens(50, 4, 7, seed=1, bos_id=49, exclude_ids=(0, 1))
    assert seqs.shape == (4, 15)
    assert seqs.dtype == torch.long
    assert torch.all(seqs[:, 0] == 49)
    assert torch.equal(seqs[:, 1:8], seqs[:, 8:15])
    assert not torch.isin(seqs[:, 1:], torch.tensor([0, 1, 49])).any()
    again = ind.repeated_random_tokens(50, 4, 7, seed=1, bos_id=49, exclude_ids=(0, 1))
    assert torch.equal(seqs, again)


def test_perfect_induction_head_scores_one_and_prev_token_head_zero():
    half = 6
    induction = _induction_pattern(half)
    prev = _prev_token_pattern(1 + 2 * half)
    pats = np.stack([induction, prev])  # [head, q, k]
    assert ind.induction_score(pats) == pytest.approx([1.0, 0.0])
    assert ind.previous_token_score(pats)[1] == pytest.approx(1.0)
    # the induction head never attends to t-1 (its sources are t-half+1, or BOS)
    assert ind.previous_token_score(pats)[0] == pytest.approx(0.0)


def test_induction_score_half_attention():
    half = 5
    p = 0.5 * _induction_pattern(half) + 0.5 * _prev_token_pattern(1 + 2 * half)
    assert ind.induction_score(torch.tensor(p)) == pytest.approx(0.5)
    assert ind.previous_token_score(p) == pytest.approx(0.5 * 9 / 9 + 0.0)


def test_copy_losses_by_hand():
    # half=3: losses columns predict tokens 1..6; first copy = tokens 1..3, second = 5..6
    losses = np.array([[1.0, 2.0, 3.0, 9.0, 0.5, 1.5]])
    first, second = ind.repeat_copy_losses(losses)
    assert first == pytest.approx([2.0])
    assert second == pytest.approx([1.0])


def test_token_losses_match_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    tokens = torch.randint(0, 7, (2, 5), generator=gen)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none"
    ).reshape(2, 4)
    np.testing.assert_allclose(ind.token_losses(logits, tokens), ref.numpy(), rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        vocab_size=50,
        n_positions=64,
        bos_token_id=49,
        eos_token_id=49,
    )
    return GPT2LMHeadModel(cfg).eval()


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_head_scores_on_tiny_gpt2_match_hf_attentions(tiny_model):
    before_impl = tiny_model.config._attn_implementation
    n_before = _hook_count(tiny_model)
    seqs = ind.repeated_random_tokens(50, 5, 8, seed=3, bos_id=49)
    df = ind.head_scores(tiny_model, seqs, batch_size=2)
    assert list(df["head_name"]) == ["0.0", "0.1", "1.0", "1.1"]
    assert _hook_count(tiny_model) == n_before
    assert tiny_model.config._attn_implementation == before_impl
    # independent path: HF's own output_attentions with eager attention
    with ind.eager_attention(tiny_model), torch.no_grad():
        out = tiny_model(seqs, output_attentions=True)
    ref = torch.stack(out.attentions)  # [layer, batch, head, q, k]
    np.testing.assert_allclose(
        df["induction"].to_numpy(), ind.induction_score(ref).mean(axis=1).ravel(), rtol=1e-5
    )
    pats = ind.attention_patterns(tiny_model, seqs, batch_size=3)
    assert pats.shape == (2, 5, 2, 17, 17)
    np.testing.assert_allclose(pats.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)
    first, second = ind.repeat_copy_losses(ind.token_losses(out.logits, seqs))
    np.testing.assert_allclose(df.attrs["first_copy_loss"], first, rtol=1e-5)
    np.testing.assert_allclose(df.attrs["second_copy_loss"], second, rtol=1e-5)
    per_seq = ind.head_scores(tiny_model, seqs, per_sequence=True)
    assert len(per_seq) == 5 * 4
    np.testing.assert_allclose(
        per_seq.groupby(["layer", "head"])["induction"].mean().to_numpy(),
        df["induction"].to_numpy(),
        rtol=1e-5,
    )


def test_hooks_removed_after_exception(tiny_model):
    before_impl = tiny_model.config._attn_implementation
    seqs = ind.repeated_random_tokens(50, 2, 4, seed=0, bos_id=49)
    n_before = _hook_count(tiny_model)  # transformers may keep hooks of its own
    with pytest.raises(RuntimeError, match="boom"):
        with ind.capture_attention(tiny_model) as store:
            tiny_model(seqs)
            assert _hook_count(tiny_model) == n_before + 2
            assert set(store) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}
            raise RuntimeError("boom")
    assert _hook_count(tiny_model) == n_before
    assert tiny_model.config._attn_implementation == before_impl


def test_icl_positions_and_score():
    assert ind.icl_positions(1024) == (50, 500)
    assert ind.icl_positions(256) == (round(256 * 50 / 1024), round(256 * 500 / 1024))
    losses = np.tile(np.linspace(5.0, 3.0, 256), (3, 1))
    losses[1] += 1.0  # a constant offset does not change the score
    early, late = ind.icl_positions(256)
    expected = losses[0, late] - losses[0, early]
    assert ind.icl_score(losses) == pytest.approx(expected)
    np.testing.assert_allclose(ind.icl_score(losses, per_window=True), [expected] * 3)
    assert ind.icl_score(losses, late=10, early=0) == pytest.approx(losses[0, 10] - 5.0)


def _planted_sigmoid(steps, mid_step, width, n_seqs, noise, seed):
    rng = np.random.default_rng(seed)
    x = np.log(steps + 1.0)
    # each sequence has its own small offset of the midpoint (so the CI has width) + noise
    mids = np.log(mid_step + 1.0) + rng.normal(0, 0.1, n_seqs)
    curve = 0.05 + 0.8 / (1 + np.exp(-(x[:, None] - mids[None, :]) / width))
    return curve + rng.normal(0, noise, curve.shape)


@pytest.mark.parametrize("steps, planted", [(CRFM_LIKE, 800), (CRFM_LIKE, 3000), (MINI_STEPS, 350)])
def test_detect_phase_change_finds_planted_onset(steps, planted):
    vals = _planted_sigmoid(steps, planted, width=0.2, n_seqs=40, noise=0.15, seed=planted)
    pc = ind.detect_phase_change(steps, vals, n_boot=100, seed=1)
    i = int(np.searchsorted(steps, planted))
    interval = steps[i + 1] - steps[i]
    assert abs(pc.midpoint - planted) <= interval
    assert abs(pc.step - planted) <= interval
    assert pc.step in steps
    assert pc.ci_low <= planted <= pc.ci_high
    assert pc.onset < pc.midpoint < pc.end


def test_detect_phase_change_falling_metric_single_curve():
    steps = MINI_STEPS
    x = np.log(steps + 1.0)
    loss = 4.0 - 2.0 / (1 + np.exp(-(x - np.log(201)) / 0.15))
    pc = ind.detect_phase_change(steps, loss)
    assert pc.midpoint == pytest.approx(200, rel=0.05)
    assert pc.hi - pc.lo == pytest.approx(-2.0, abs=0.05)
    assert np.isnan(pc.ci_low)
    assert pc.max_slope_step in (200, 220)


def test_training_loss_bump_found_where_planted():
    steps = CRFM_LIKE
    x = np.log(steps + 1.0)
    rng = np.random.default_rng(0)
    # initial drop from ln(V) + slow decay + a plateau-then-drop bump at step ~2000
    base = 3.0 + 8.0 / (1 + np.exp((x - np.log(60)) / 0.5)) + 0.5 * np.exp(-(x - 4) / 4)
    bump = 0.4 / (1 + np.exp((x - np.log(2001)) / 0.15))
    loss = base + bump + rng.normal(0, 0.005, x.size)
    found = ind.training_loss_bump(steps, loss)
    assert found is not None
    assert found["start"] <= 2000 <= found["end"]
    assert abs(ind.schedule_index(steps, found["steepest"]) - ind.schedule_index(steps, 2000)) <= 3
    assert ind.training_loss_bump(steps, base + rng.normal(0, 0.005, x.size)) is None


def test_phase_changes_coincide():
    steps = MINI_STEPS
    bump = {"start": 180, "end": 260, "steepest": 220, "mass": 1.0}
    out = ind.phase_changes_coincide(steps, 220, 240, bump, tolerance=1)
    assert out["induction_icl"] and out["induction_bump"] and out["icl_bump"] and out["all"]
    out = ind.phase_changes_coincide(steps, 220, 400, bump, tolerance=1)
    assert not out["induction_icl"] and not out["icl_bump"] and not out["all"]
    assert ind.phase_changes_coincide(steps, 220, 220, None)["all"] is False


def test_phase_change_summary_and_compare():
    df = pd.DataFrame({"size": ["small"] * 3 + ["medium"] * 2, "step": [100, 200, 300, 1000, 1400]})
    s = ind.phase_change_summary(df).set_index("size")
    assert s.loc["small", "mean"] == pytest.approx(200)
    assert s.loc["small", "sd"] == pytest.approx(100)
    assert s.loc["medium", "range"] == pytest.approx(400)
    cmp = ind.compare_sizes(df)
    assert cmp["mean_diff"] == pytest.approx(1000)
    assert cmp["mannwhitney_p"] == pytest.approx(0.2)  # exact: 2 / C(5,2) = 0.2


def test_figures_return_figures():
    rows = [
        {"run": r, "step": s, "layer": lay, "head": h, "induction": v}
        for r in ("a", "b")
        for s in (0, 10, 100)
        for lay in (0, 1)
        for h in (0, 1)
        for v in [0.1 * s / 100 + 0.2 * lay]
    ]
    df = pd.DataFrame(rows)
    fig = ind.plot_head_heatmap(df[df["run"] == "a"], title="run a (seed 1)")
    assert fig.axes[0].get_xlabel() == "checkpoint step"
    best = df.groupby(["run", "step"], as_index=False)["induction"].max()
    fig2 = ind.plot_induction_over_training(
        best, detected={"a": 10}, labels={"a": "a (seed 1)", "b": "b (seed 2)"}
    )
    ax = fig2.axes[0]
    assert ax.get_xlabel() == "training step (log scale)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (seed 1)", "b (seed 2)"]
