"""Tests for seedscope.analyses.induction against hand-built patterns and planted phase changes."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel

from seedscope.analyses import induction as ind

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


def _induction_pattern_from_tokens(tokens: np.ndarray) -> np.ndarray:
    """A perfect induction head, built from token identity alone: each query attends to
    the token right after the earlier occurrence of its own token; a query whose token has
    no earlier occurrence attends to BOS."""
    n = len(tokens)
    p = np.zeros((n, n))
    for q in range(n):
        earlier = [s for s in range(q) if tokens[s] == tokens[q]]
        if earlier:
            p[q, earlier[-1] + 1] = 1.0
        else:
            p[q, 0] = 1.0
    return p


def _induction_pattern(half: int, seed: int = 0) -> np.ndarray:
    seq = ind.repeated_random_tokens(50, 1, half, seed=seed, bos_id=49)[0].numpy()
    return _induction_pattern_from_tokens(seq)


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


def test_repeated_random_tokens_draw_each_half_without_replacement():
    # 30 of 40 ids: with replacement nearly every sequence would hold a repeat
    seqs = ind.repeated_random_tokens(41, 200, 30, seed=0, bos_id=40)
    halves = seqs[:, 1:31].numpy()
    assert all(len(set(h)) == 30 for h in halves)
    assert ind.accidental_repeat_fraction(seqs) == 0.0
    # the check itself sees a planted repeat
    bad = seqs.clone()
    bad[0, 2] = bad[0, 1]
    assert ind.accidental_repeat_fraction(bad) == pytest.approx(1 / 200)
    # draws stay inside the allowed ids (e.g. those seen often enough in training)
    allowed = ind.probe_token_ids(np.array([0, 5, 1, 9, 9, 2, 7, 7]), 8, 5, exclude_ids=[7])
    np.testing.assert_array_equal(allowed, [1, 3, 4, 6])
    few = ind.repeated_random_tokens(8, 10, 3, seed=0, bos_id=7, allowed_ids=allowed)
    assert set(np.unique(few[:, 1:].numpy())) <= {1, 3, 4, 6}
    np.testing.assert_array_equal(ind.probe_token_ids(None, 4, 5), [0, 1, 2, 3])
    with pytest.raises(ind.SeedscopeError, match="half_len"):
        ind.repeated_random_tokens(8, 10, 5, seed=0, bos_id=7, allowed_ids=allowed)


def test_perfect_induction_head_scores_one_and_prev_token_head_zero():
    half = 6
    induction = _induction_pattern(half)
    # the token-identity construction lands on the second copy's stripe t -> t - half + 1
    assert all(induction[t, t - half + 1] == 1.0 for t in range(half + 1, 2 * half + 1))
    prev = _prev_token_pattern(1 + 2 * half)
    pats = np.stack([induction, prev])  # [head, q, k]
    assert ind.induction_score(pats) == pytest.approx([1.0, 0.0])
    assert ind.previous_token_score(pats)[1] == pytest.approx(1.0)
    # the induction head never attends to t-1 (its sources are t-half+1, or BOS)
    assert ind.previous_token_score(pats)[0] == pytest.approx(0.0)


def _stripe_mean_by_loops(pattern: np.ndarray, tokens: np.ndarray) -> float:
    """Independent prefix-matching score: over second-copy queries, the attention to the
    position after the query token's earlier occurrence (found by searching the tokens)."""
    half = (len(tokens) - 1) // 2
    vals = []
    for q in range(half + 1, len(tokens)):
        s = [j for j in range(q) if tokens[j] == tokens[q]][0]
        vals.append(pattern[q, s + 1])
    return float(np.mean(vals))


def test_tl_mul_score_of_a_perfect_head_and_agreement_with_ours():
    half = 6
    seq = ind.repeated_random_tokens(50, 1, half, seed=0, bos_id=49)
    perfect = _induction_pattern_from_tokens(seq[0].numpy())
    # TransformerLens's docstring: "mul" = attention on the pattern / total attention;
    # a perfect head on BOS + two copies of L tokens scores L / (2L + 1)
    score = ind.tl_induction_score(perfect[None, None, None], seq)
    assert score.shape == (1, 1)
    assert score[0, 0] == pytest.approx(half / (2 * half + 1))
    det = ind.induction_detection_pattern(seq)[0]
    assert det.sum() == half and np.all(np.triu(det, 1) == 0)
    # random causal heads: ours equals the stripe mean computed by search, and the TL score
    # of a sequence without accidental repeats is exactly L/(2L+1) times it -> same ranking
    rng = np.random.default_rng(0)
    seqs = ind.repeated_random_tokens(50, 3, half, seed=1, bos_id=49)
    n = seqs.shape[1]
    raw = np.tril(rng.gamma(0.3, size=(2, 3, 4, n, n)))  # [layer, batch, head, q, k]
    raw[..., np.arange(n), np.arange(n)] += 1e-3
    pats = raw / raw.sum(-1, keepdims=True)
    pats[0, :, 1] = 0.3 * pats[0, :, 1] + 0.7 * perfect  # a strong head among noise
    ours = ind.induction_score(pats).mean(axis=1)  # [layer, head]
    by_search = np.array(
        [
            [
                np.mean([_stripe_mean_by_loops(pats[lay, b, h], seqs[b].numpy()) for b in range(3)])
                for h in range(4)
            ]
            for lay in range(2)
        ]
    )
    np.testing.assert_allclose(ours, by_search, rtol=1e-12)
    tl = ind.tl_induction_score(pats, seqs)
    np.testing.assert_allclose(tl, ours * half / (2 * half + 1), rtol=1e-10)
    assert stats.spearmanr(tl.ravel(), ours.ravel()).statistic == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(tl), tl.shape) == (0, 1)


def _tl_score_by_loops(pat: np.ndarray, tokens: np.ndarray) -> float:
    """TransformerLens's "mul" score spelled out: attention from each query q to keys k
    whose previous token (at k - 1 < q) equals the token at q, over all attention."""
    n = len(tokens)
    hit = sum(
        pat[q, k] for q in range(n) for k in range(1, n) if k - 1 < q and tokens[k - 1] == tokens[q]
    )
    return hit / pat.sum()


def test_tl_score_on_sequences_with_accidental_repeats():
    # halves drawn with replacement from 4 ids: many accidental repeats, so the TL score
    # is no longer a fixed multiple of ours (the repeat-free case is a tautology); it must
    # still match TransformerLens's definition and rank the strong head first
    rng = np.random.default_rng(3)
    half, n_seq = 8, 4
    firsts = rng.integers(0, 4, (n_seq, half))
    seqs = np.concatenate([np.full((n_seq, 1), 9), firsts, firsts], axis=1)
    assert ind.accidental_repeat_fraction(torch.tensor(seqs)) > 0
    n = seqs.shape[1]
    raw = np.tril(rng.gamma(0.3, size=(2, n_seq, 4, n, n)))
    raw[..., np.arange(n), np.arange(n)] += 1e-3
    pats = raw / raw.sum(-1, keepdims=True)
    perfect = _induction_pattern(half)
    pats[1, :, 2] = 0.3 * pats[1, :, 2] + 0.7 * perfect
    tl = ind.tl_induction_score(pats, seqs)
    by_loops = np.array(
        [
            [np.mean([_tl_score_by_loops(pats[lay, b, h], seqs[b]) for b in range(n_seq)])
             for h in range(4)]
            for lay in range(2)
        ]
    )  # fmt: skip
    np.testing.assert_allclose(tl, by_loops, rtol=1e-12)
    ours = ind.induction_score(pats).mean(axis=1)
    ratio = tl / ours
    assert np.ptp(ratio) > 0.05  # not proportional: the check is not a tautology
    assert np.unravel_index(np.argmax(tl), tl.shape) == (1, 2)
    assert np.unravel_index(np.argmax(ours), ours.shape) == (1, 2)
    assert stats.spearmanr(tl.ravel(), ours.ravel()).statistic > 0.5


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
    scored = ind.head_scores(tiny_model, seqs, batch_size=2)
    df = scored.heads
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
    np.testing.assert_allclose(
        df["tl_induction"].to_numpy(), ind.tl_induction_score(ref, seqs).ravel(), rtol=1e-5
    )
    pats = ind.attention_patterns(tiny_model, seqs, batch_size=3)
    assert pats.shape == (2, 5, 2, 17, 17)
    np.testing.assert_allclose(pats.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)
    first, second = ind.repeat_copy_losses(ind.token_losses(out.logits, seqs))
    np.testing.assert_allclose(scored.first_copy_loss, first, rtol=1e-5)
    np.testing.assert_allclose(scored.second_copy_loss, second, rtol=1e-5)
    assert scored.copy_loss_ratio == pytest.approx(second.mean() / first.mean(), rel=1e-5)
    per_seq = ind.head_scores(tiny_model, seqs, per_sequence=True).heads
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


def test_icl_bands_and_score():
    assert ind.icl_positions(1024) == (50, 500)
    assert ind.icl_bands(1024) == ((40, 60), (450, 550))
    assert ind.icl_bands(127) == ((5, 7), (56, 68))  # round(127 * 40 / 1024) = 5, ...
    losses = np.tile(np.linspace(5.0, 3.0, 256), (3, 1))
    losses[1] += 1.0  # a constant offset does not change the score
    (e0, e1), (l0, l1) = ind.icl_bands(256)
    expected = losses[0, l0 : l1 + 1].mean() - losses[0, e0 : e1 + 1].mean()
    # by hand: linear loss, so each band mean is the loss at the band's centre
    step = 2.0 / 255
    assert expected == pytest.approx(-step * ((l0 + l1) / 2 - (e0 + e1) / 2))
    assert ind.icl_score(losses) == pytest.approx(expected)
    np.testing.assert_allclose(ind.icl_score(losses, per_window=True), [expected] * 3)
    assert ind.icl_score(losses, late=10, early=0) == pytest.approx(losses[0, 10] - 5.0)
    assert ind.icl_score(losses, late=(10, 12), early=(0, 2)) == pytest.approx(
        losses[0, 10:13].mean() - losses[0, 0:3].mean()
    )
    with pytest.raises(ind.SeedscopeError, match="overlap"):
        ind.icl_bands(128, early=(40, 500), late=(450, 550))


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


def test_detect_phase_change_says_no_change_on_flat_noisy_and_trending_curves():
    steps = MINI_STEPS
    x = np.log(steps + 1.0)
    rng = np.random.default_rng(0)
    hits = {"flat": 0, "ar1": 0, "trend": 0}
    for _ in range(20):
        flat = 0.05 + rng.normal(0, 0.02, (steps.size, 20))  # chance-level score, 20 seqs
        hits["flat"] += ind.detect_phase_change(steps, flat, n_boot=0) is not None
        e = np.zeros(steps.size)  # strongly autocorrelated noise, sd ~0.08
        for t in range(1, steps.size):
            e[t] = 0.8 * e[t - 1] + rng.normal(0, 0.05)
        hits["ar1"] += ind.detect_phase_change(steps, 0.05 + e, n_boot=0) is not None
        ramp = 0.05 + 0.3 * (x - x[0]) / (x[-1] - x[0]) + rng.normal(0, 0.01, x.size)
        hits["trend"] += ind.detect_phase_change(steps, ramp, n_boot=0) is not None
    # AR(1) wanders enough to mimic a jump now and then (~1% in 200 draws): at most 1 of 20
    assert hits["flat"] == 0 and hits["trend"] == 0 and hits["ar1"] <= 1, hits
    fit = ind.fit_phase_change(steps, 0.05 + rng.normal(0, 0.02, steps.size))
    assert not fit.detected and "amplitude" in fit.reason and np.isnan(fit.ci_low)
    # the same criteria pass a planted jump of the size they ask for
    jump = 0.05 + 0.3 / (1 + np.exp(-(x - np.log(301)) / 0.15)) + rng.normal(0, 0.02, x.size)
    found = ind.detect_phase_change(steps, jump, n_boot=0)
    assert found is not None and found.detected
    assert found.midpoint == pytest.approx(300, rel=0.15)
    assert found.amplitude == pytest.approx(0.3, abs=0.05)
    small = 0.05 + 0.05 / (1 + np.exp(-(x - np.log(301)) / 0.15))  # below min_amplitude
    assert ind.detect_phase_change(steps, small, min_amplitude=0.1) is None
    assert ind.detect_phase_change(steps, small, min_amplitude=0.02) is not None


def test_a_jump_at_the_first_or_last_checkpoint_only_is_no_phase_change():
    # 24 log-spaced checkpoints, 48 sequences of a flat score with noise: a +0.15 jump at
    # the last checkpoint only, or +0.3 at the first only (an initialisation effect), was
    # called a phase change 30/30 times before both plateaus had to be observed
    steps = np.unique(np.round(np.geomspace(1, 20000, 24)).astype(int))
    x = np.log(steps + 1.0)
    rng = np.random.default_rng(0)
    last = first = 0
    for _ in range(10):
        v = 0.1 + rng.normal(0, 0.05, (steps.size, 48))
        v[-1] += 0.15
        fit = ind.fit_phase_change(steps, v, n_boot=0)
        last += fit.detected
        w = 0.1 + rng.normal(0, 0.05, (steps.size, 48))
        w[0] += 0.3
        first += ind.detect_phase_change(steps, w, n_boot=0) is not None
    assert last == 0 and first == 0, (last, first)
    assert "plateau" in fit.reason
    # a sharp jump with two checkpoints on each side is still a phase change
    sharp = 0.1 + 0.3 * (x > (x[2] + x[3]) / 2) + rng.normal(0, 0.05, (48, steps.size))
    assert ind.detect_phase_change(steps, sharp.T, n_boot=0) is not None
    late = 0.1 + 0.3 * (x > (x[-3] + x[-2]) / 2) + rng.normal(0, 0.05, (48, steps.size))
    assert ind.detect_phase_change(steps, late.T, n_boot=0) is not None


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


def test_centred_training_loss_puts_a_planted_drop_where_it_is():
    # per-update loss with a sharp drop at update 400; checkpoints every 100 there
    updates = np.arange(1, 1001)
    loss = 3.0 - 1.0 / (1 + np.exp(-(updates - 400) / 8.0))
    ckpts = np.array([100, 200, 300, 400, 500, 600, 800, 1000])
    steps, est = ind.centred_training_loss(updates, loss, ckpts)
    np.testing.assert_array_equal(steps, ckpts)
    truth = 3.0 - 1.0 / (1 + np.exp(-(ckpts - 400) / 8.0))
    # at the drop itself: halfway (2.5); away from it, the planted value
    assert est[3] == pytest.approx(2.5, abs=0.02)
    np.testing.assert_allclose(np.delete(est, 3), np.delete(truth, 3), atol=0.02)
    # the backward mean over (previous checkpoint, s] reads the drop as not yet begun at
    # step 400 (it averages updates 301..400): the shift this estimate removes
    backward = loss[(updates > 300) & (updates <= 400)].mean()
    assert backward > 2.85
    # a linear trend is returned exactly, even at the ends of the log
    lin_steps, lin = ind.centred_training_loss(updates, 5.0 - 0.001 * updates, ckpts)
    np.testing.assert_allclose(lin, 5.0 - 0.001 * ckpts, atol=1e-9)


def test_signed_lags_by_hand():
    out = ind.signed_lags(99.0, 999.0)
    assert out["lag"] == pytest.approx(np.log(10.0))
    assert np.isnan(out["ci_low"])
    rb = np.log(100.0) + np.array([-0.1, 0.0, 0.1, 0.0])
    ob = np.log(1000.0) + np.array([0.0, 0.0, 0.0, 0.2])
    out = ind.signed_lags(99.0, 999.0, rb, ob, ci=1.0)
    assert out["ci_low"] == pytest.approx(np.log(10.0) - 0.1)
    assert out["ci_high"] == pytest.approx(np.log(10.0) + 0.2)


def _runs(induction_steps, other_steps):
    n = len(induction_steps)
    return pd.DataFrame(
        {"size": ["small"] * (n // 2) + ["medium"] * (n - n // 2), "a": induction_steps,
         "b": other_steps}
    )  # fmt: skip


def test_coincidence_test_finds_planted_lockstep_and_not_a_size_effect():
    rng = np.random.default_rng(0)
    # seeds vary the onset by ~+-40%; medium is 3x later than small (a size effect)
    ind_steps = np.exp(np.log([300] * 5 + [900] * 5) + rng.normal(0, 0.4, 10))
    locked = ind_steps * np.exp(rng.normal(0, 0.05, 10))
    out = ind.coincidence_test(_runs(ind_steps, locked), "a", "b", n_perm=2000, seed=1)
    assert out["n"] == 10
    assert out["matched"] < out["mismatched"]
    assert out["p_value"] < 0.01
    assert out["r"] > 0.9
    # null: b follows the size but not the seed -> strongly correlated over all 10 runs,
    # yet no coincidence claim within sizes; check the false-positive rate over many draws
    rejections = 0
    for i in range(100):
        r = np.random.default_rng(100 + i)
        a = np.exp(np.log([300] * 5 + [900] * 5) + r.normal(0, 0.4, 10))
        b = np.exp(np.log([300] * 5 + [900] * 5) + r.normal(0, 0.4, 10))
        rejections += (
            ind.coincidence_test(_runs(a, b), "a", "b", n_perm=200, seed=i)["p_value"] < 0.05
        )
    assert rejections <= 10  # nominal 5 of 100
    missing = _runs(ind_steps, np.r_[locked[:8], np.nan, np.nan])
    assert ind.coincidence_test(missing, "a", "b", n_perm=10)["n"] == 8
    assert np.isnan(ind.coincidence_test(_runs([1.0, 2.0], [1.0, 2.0]), "a", "b")["p_value"])
    # a size with a single run with both events is dropped from the test and from n
    lone = _runs(ind_steps, np.r_[locked[:6], np.nan, np.nan, np.nan, np.nan])
    res = ind.coincidence_test(lone, "a", "b", n_perm=50)
    assert res["n"] == 5 and res["n_dropped"] == 1
    assert res["n_arrangements"] == 120  # 5! shufflings of the small seeds
    # the within-size r has a permutation p from the same shuffles: small when locked,
    # roughly uniform under the null (size-only) draws
    assert out["r_p_value"] < 0.01 and out["n_arrangements"] == 120**2
    null_r = [
        ind.coincidence_test(
            _runs(*np.exp(np.log([300] * 5 + [900] * 5) + np.random.default_rng(i).normal(0, 0.4, (2, 10)))),
            "a", "b", n_perm=200, seed=i,
        )["r_p_value"]
        for i in range(60)
    ]  # fmt: skip
    assert np.mean(np.array(null_r) < 0.05) <= 0.12


def test_phase_change_summary_and_compare():
    df = pd.DataFrame({"size": ["small"] * 3 + ["medium"] * 2, "step": [100, 200, 300, 1000, 1400]})
    s = ind.phase_change_summary(df).set_index("size")
    assert s.loc["small", "mean"] == pytest.approx(200)
    assert s.loc["small", "sd"] == pytest.approx(100)
    assert s.loc["medium", "range"] == pytest.approx(400)
    cmp = ind.compare_sizes(df)
    assert cmp["mean_diff"] == pytest.approx(1000)
    assert cmp["mannwhitney_p"] == pytest.approx(0.2)  # exact: 2 / C(5,2) = 0.2


def test_induction_sentence_words_the_size_difference_by_its_sign():
    from seedscope.stages.induction import induction_sentence

    changes = pd.DataFrame(
        {
            "size": ["small"] * 2 + ["medium"] * 2,
            "formed": True,
            "jump_detected": True,
            "midpoint": [900.0, 1100.0, 600.0, 700.0],
            "step": [1000, 1000, 500, 800],  # schedule steps: not what is compared
            "final_induction": 0.9,
            "final_induction_all_ids": 0.9,
        }
    )
    cmp = ind.compare_sizes(changes, value="midpoint")
    assert cmp["mean_diff"] == pytest.approx(-350)
    text = induction_sentence(changes, cmp)
    assert "350 steps earlier" in text and "later" not in text
    text = induction_sentence(changes, {**cmp, "mean_diff": 200.0})
    assert "200 steps later" in text


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


def test_each_quantity_over_training_names_its_own_unit():
    curves = pd.DataFrame(
        [
            {"run": "a", "step": s, "induction": 0.1, "copy_loss_ratio": 0.9, "icl": -0.2}
            for s in (1, 10, 100)
        ]
    )
    ylabels = {
        value: ind.plot_induction_over_training(curves, value=value).axes[0].get_ylabel()
        for value in ("induction", "copy_loss_ratio", "icl")
    }
    assert "attention" in ylabels["induction"]
    assert "ratio" in ylabels["copy_loss_ratio"] and "attention" not in ylabels["copy_loss_ratio"]
    assert "nats" in ylabels["icl"] and "late minus early" in ylabels["icl"]
