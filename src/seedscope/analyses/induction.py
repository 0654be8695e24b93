"""Analysis 6: when does each run grow induction heads, and does the phase change line up
with the in-context-learning jump and the bump in the training loss?

Conventions used throughout:

- Repeated-token batches are `[n_seqs, 1 + 2*half_len]`: BOS at position 0, a random
  sequence at positions `1..half_len` and the same sequence again at
  `half_len+1..2*half_len`.
- Attention patterns are `[layer, batch, head, query_pos, key_pos]` (rows sum to 1).
- Per-token losses are next-token losses: `loss[:, p]` is the loss of predicting token `p+1`
  from tokens `0..p` (so a `[batch, pos]` batch gives `[batch, pos-1]` losses).
- The training-step axis is `x = log(step + 1)` (natural log), so step 0 is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats
from scipy.ndimage import gaussian_filter1d

from seedscope.core.errors import SeedscopeError
from seedscope.core.stats import log_step
from seedscope.models.hooks import (  # noqa: F401  (part of this module's API)
    act_name,
    attention_modules,
    capture_attention,
    eager_attention,
    induction_positions,
)

# --------------------------------------------------------------------------------------
# Naming and attention capture
# --------------------------------------------------------------------------------------


@torch.no_grad()
def attention_patterns(
    model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Attention patterns of every head: `tokens [batch, pos]` ->
    `Tensor [layer, batch, head, query_pos, key_pos]` (float32, rows sum to 1)."""
    _check_tokens(tokens)
    model.eval()
    out = []
    n_layers = len(attention_modules(model))
    with capture_attention(model) as store:
        for start in range(0, tokens.shape[0], batch_size):
            store.clear()
            model(tokens[start : start + batch_size])
            out.append(torch.stack([store[act_name("pattern", i)] for i in range(n_layers)]))
    return torch.cat(out, dim=1).float()


def _check_tokens(tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise SeedscopeError(
            "Tokens must be a 2-d LongTensor [batch, pos].", "pass e.g. repeated_random_tokens()."
        )


# --------------------------------------------------------------------------------------
# Repeated random tokens and head scores
# --------------------------------------------------------------------------------------


def probe_token_ids(
    counts: np.ndarray | None,
    vocab_size: int,
    min_count: int,
    exclude_ids: Sequence[int] = (),
) -> np.ndarray:
    """Token ids a repeated-token probe may draw from: those seen at least `min_count` times
    in training (`counts [vocab_size]`, e.g. the corpus's `train_token_counts.npy`), minus
    `exclude_ids` (special tokens). `counts=None` or `min_count=0` -> every id. An id that
    training never showed has an untrained embedding, and copying it tests nothing."""
    ids = np.arange(int(vocab_size))
    if counts is not None and min_count > 0:
        c = np.asarray(counts)
        if c.shape[0] < vocab_size:
            c = np.concatenate([c, np.zeros(vocab_size - c.shape[0], dtype=c.dtype)])
        ids = ids[c[:vocab_size] >= min_count]
    return np.setdiff1d(ids, np.array(sorted({int(i) for i in exclude_ids}), dtype=int))


def repeated_random_tokens(
    vocab_size: int,
    n_seqs: int,
    half_len: int,
    seed: int,
    bos_id: int,
    exclude_ids: Sequence[int] = (),
    allowed_ids: Sequence[int] | np.ndarray | None = None,
) -> torch.Tensor:
    """BOS, a random token sequence without repeats, then the same sequence again.

    Returns a LongTensor `[n_seqs, 1 + 2*half_len]`. Each half is drawn *without
    replacement* (with `numpy.random.default_rng(seed)`) from `allowed_ids` (default
    `range(vocab_size)`) minus `bos_id` and `exclude_ids`, so every second-copy token has
    exactly one earlier occurrence and the induction target (the token after it) is
    unambiguous. With replacement, half of 30 draws from 512 ids already holds an accidental
    repeat in ~57% of sequences.
    """
    if half_len < 2 or n_seqs < 1:
        raise SeedscopeError(
            f"Need n_seqs >= 1 and half_len >= 2 (got {n_seqs}, {half_len}).",
            "use e.g. n_seqs=32, half_len=50.",
        )
    pool = np.arange(vocab_size) if allowed_ids is None else np.asarray(allowed_ids, int)
    banned = np.array(sorted({int(bos_id), *map(int, exclude_ids)}), dtype=int)
    allowed = np.setdiff1d(pool, banned)
    if allowed.size < half_len:
        raise SeedscopeError(
            f"Only {allowed.size} token ids to draw {half_len} distinct ones from.",
            "lower induction.half_len or induction.probe_min_count.",
        )
    rng = np.random.default_rng(seed)
    # a random permutation per row, first half_len entries: sampling without replacement
    half = allowed[np.argsort(rng.random((n_seqs, allowed.size)), axis=1)[:, :half_len]]
    bos = np.full((n_seqs, 1), int(bos_id))
    return torch.from_numpy(np.concatenate([bos, half, half], axis=1)).long()


def accidental_repeat_fraction(seqs: torch.Tensor | np.ndarray) -> float:
    """Fraction of repeated-token sequences `[n_seqs, 1 + 2*half_len]` whose first half
    holds some id twice (an ambiguous induction target)."""
    s = _as_numpy(seqs).astype(np.int64)
    half = s[:, 1 : 1 + _half_len(s.shape[1])]
    srt = np.sort(half, axis=1)
    return float(np.mean((np.diff(srt, axis=1) == 0).any(axis=1)))


def _half_len(n_pos: int) -> int:
    if n_pos < 5 or (n_pos - 1) % 2:
        raise SeedscopeError(
            f"A repeated-token sequence has 1 + 2*half_len positions; got {n_pos}.",
            "build the batch with repeated_random_tokens().",
        )
    return (n_pos - 1) // 2


def induction_score(patterns: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-head induction score on a repeated-token batch.

    `patterns [..., query_pos, key_pos]` with `pos = 1 + 2*half_len` -> `[...]`: the mean,
    over destinations `t` in the second copy (`half_len+1 .. 2*half_len`), of the attention
    from `t` to `t - half_len + 1`, the token right after the earlier occurrence of token
    `t` (never BOS). A perfect induction head scores 1.
    """
    p = _as_numpy(patterns)
    dest, src = induction_positions(_half_len(p.shape[-1]))
    return p[..., dest, src].mean(axis=-1)


def induction_detection_pattern(tokens: torch.Tensor | np.ndarray) -> np.ndarray:
    """TransformerLens's induction-head detection pattern, built from token identity.

    `tokens [batch, pos]` -> `[batch, pos, pos]` of 0/1: `D[b, q, k] = 1` when the token at
    `k - 1` equals the token at `q` and `k - 1 < q` (an earlier occurrence of the query's
    token; the key is the token after it). Same as `get_induction_head_detection_pattern`
    in TransformerLens `head_detector.py` (duplicate-token pattern with the diagonal
    removed, shifted one key to the right, first column zero, lower-triangular).
    """
    t = _as_numpy(tokens).astype(np.int64)
    if t.ndim != 2:
        raise SeedscopeError("tokens must be [batch, pos].", "pass a 2-d token array.")
    n = t.shape[1]
    same = t[:, :, None] == t[:, None, :]  # [b, q, s]: token q == token s
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)  # s < q
    dup = same & earlier
    out = np.zeros_like(dup)
    out[:, :, 1:] = dup[:, :, :-1]  # key k = s + 1
    return out.astype(np.float64)


def tl_induction_score(
    patterns: torch.Tensor | np.ndarray,
    tokens: torch.Tensor | np.ndarray,
    per_sequence: bool = False,
) -> np.ndarray:
    """TransformerLens `detect_head(model, seqs, "induction_head")` with its default
    `error_measure="mul"`, `exclude_bos=False`, `exclude_current_token=False`.

    `patterns [layer, batch, head, q, k]`, `tokens [batch, pos]` -> `[layer, head]`: per
    sequence, the attention falling on the detection pattern's 1s divided by the total
    attention (= pos: rows sum to 1), then the mean over sequences (as `detect_head` does
    for a list of prompts; `per_sequence=True` keeps `[layer, batch, head]`). A perfect
    induction head on BOS + two copies of `L` distinct
    tokens scores `L / (2L + 1)` (~0.5): the first copy's queries have no target.
    Reimplemented here (TransformerLens cannot be installed beside this project's pins);
    source read: `transformer_lens/head_detector.py`, `compute_head_attention_similarity_score`.
    """
    p = _as_numpy(patterns).astype(np.float64)
    det = induction_detection_pattern(tokens)  # [b, q, k]
    hit = np.einsum("lbhqk,bqk->lbh", p, det)
    total = p.sum(axis=(-2, -1))
    return hit / total if per_sequence else (hit / total).mean(axis=1)


def previous_token_score(patterns: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-head previous-token score: `patterns [..., query_pos, key_pos]` -> `[...]`, the
    mean attention from `t` to `t-1` over `t = 2 .. pos-1` (BOS never a source)."""
    p = _as_numpy(patterns)
    dest = np.arange(2, p.shape[-1])
    return p[..., dest, dest - 1].mean(axis=-1)


def token_losses(logits: torch.Tensor | np.ndarray, tokens: torch.Tensor) -> np.ndarray:
    """Next-token losses (nats): `logits [batch, pos, vocab]`, `tokens [batch, pos]` ->
    `[batch, pos-1]`, where column `p` is the loss of predicting token `p+1`."""
    lg = torch.as_tensor(logits).float()
    logp = torch.log_softmax(lg[:, :-1], dim=-1)
    target = torch.as_tensor(tokens)[:, 1:].long()
    return (-logp.gather(-1, target[..., None])[..., 0]).numpy()


def repeat_copy_losses(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss on the first and on the second copy, per sequence.

    `losses [batch, pos-1]` from `token_losses` on a `[batch, 1 + 2*half_len]` batch ->
    `(first [batch], second [batch])`. First copy: predicting tokens `1..half_len` (random,
    ~log(vocab) for any model). Second copy: predicting tokens `half_len+2..2*half_len`
    (token `half_len+1` is left out: nothing before it says what follows the first copy).
    """
    losses = np.asarray(losses)
    half = _half_len(losses.shape[-1] + 1)
    first = losses[:, 0:half].mean(axis=1)
    second = losses[:, half + 1 : 2 * half].mean(axis=1)
    return first, second


@dataclass(frozen=True)
class HeadScores:
    """`head_scores`' result: the per-head table and the per-sequence copy losses."""

    heads: pd.DataFrame
    first_copy_loss: np.ndarray  # [n_seqs] mean loss on the first copy
    second_copy_loss: np.ndarray  # [n_seqs] mean loss on the second copy

    @property
    def copy_loss_ratio(self) -> float:
        """Mean second-copy loss over mean first-copy loss (below 1: the model copies)."""
        return float(np.mean(self.second_copy_loss)) / float(np.mean(self.first_copy_loss))


@torch.no_grad()
def head_scores(
    model: torch.nn.Module,
    seqs: torch.Tensor,
    batch_size: int = 32,
    per_sequence: bool = False,
) -> HeadScores:
    """Induction and previous-token score of every head on a repeated-token batch.

    `seqs [n_seqs, 1 + 2*half_len]`. `.heads` has one row per head (columns `layer, head,
    head_name` ("L.H"), `induction` (prefix matching, `induction_score`), `tl_induction`
    (TransformerLens's "mul" score, `tl_induction_score`), `prev_token`), or with
    `per_sequence=True` one row per (sequence, head) with a `seq` column; beside it, the
    per-sequence losses on the two copies (`repeat_copy_losses`).
    """
    _check_tokens(seqs)
    _half_len(seqs.shape[1])
    model.eval()
    n_layers = len(attention_modules(model))
    ind, tl, prev, first, second = [], [], [], [], []
    with capture_attention(model) as store:
        for start in range(0, seqs.shape[0], batch_size):
            batch = seqs[start : start + batch_size]
            store.clear()
            logits = model(batch).logits
            pats = torch.stack([store[act_name("pattern", i)] for i in range(n_layers)]).float()
            ind.append(induction_score(pats))  # [layer, batch, head]
            tl.append(tl_induction_score(pats, batch, per_sequence=True))
            prev.append(previous_token_score(pats))
            f, s = repeat_copy_losses(token_losses(logits, batch))
            first.append(f)
            second.append(s)
    ind_a, prev_a = np.concatenate(ind, axis=1), np.concatenate(prev, axis=1)
    n_l, n_s, n_h = ind_a.shape
    lay, seq, hd = np.meshgrid(np.arange(n_l), np.arange(n_s), np.arange(n_h), indexing="ij")
    df = pd.DataFrame(
        {
            "seq": seq.ravel(),
            "layer": lay.ravel(),
            "head": hd.ravel(),
            "induction": ind_a.ravel(),
            "tl_induction": np.concatenate(tl, axis=1).ravel(),
            "prev_token": prev_a.ravel(),
        }
    )
    if not per_sequence:
        cols = ["induction", "tl_induction", "prev_token"]
        df = df.groupby(["layer", "head"], as_index=False)[cols].mean()
    df.insert(df.columns.get_loc("head") + 1, "head_name", _head_names(df))
    return HeadScores(df, np.concatenate(first), np.concatenate(second))


def _head_names(df: pd.DataFrame) -> list[str]:
    return [f"{int(a)}.{int(b)}" for a, b in zip(df["layer"], df["head"], strict=True)]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------------------
# In-context learning score
# --------------------------------------------------------------------------------------


def icl_positions(window: int) -> tuple[int, int]:
    """(early, late) loss columns for the single-token ICL score of a `[n_windows, window]`
    loss array: the 50th and 500th of 1024-token contexts (Olsson et al. 2022), scaled to
    the window (`round(T*50/1024)`, `round(T*500/1024)`, clipped). For T = 1024: 50, 500."""
    if window < 4:
        raise SeedscopeError(f"Window of {window} tokens is too short.", "use >= 4 tokens.")
    early = int(round(window * 50 / 1024))
    late = int(round(window * 500 / 1024))
    return min(max(early, 0), window - 2), min(max(late, early + 1), window - 1)


Band = tuple[int, int]


def icl_bands(
    window: int,
    early: Sequence[float] = (40, 60),
    late: Sequence[float] = (450, 550),
    context: int = 1024,
) -> tuple[Band, Band]:
    """Early and late bands of loss columns (inclusive) for the ICL score of a
    `[n_windows, window]` loss array: positions `early` and `late` of a `context`-token
    context (default tokens 40-60 and 450-550 of 1024, after Olsson et al. 2022), scaled to
    the window: `round(window * position / context)`. Each band keeps >= 1 column, and the
    late band starts after the early band ends.

    >>> icl_bands(1024)
    ((40, 60), (450, 550))
    """
    if window < 4:
        raise SeedscopeError(f"Window of {window} tokens is too short.", "use >= 4 tokens.")
    for name, band in (("early", early), ("late", late)):
        if len(band) != 2 or not 0 <= band[0] <= band[1] <= context:
            raise SeedscopeError(
                f"ICL {name} band {list(band)} is not [start, end] within a {context}-token "
                "context.",
                f"give induction.icl_{name} as [start, end] with 0 <= start <= end <= {context}.",
            )
    if early[1] >= late[0]:
        raise SeedscopeError(
            f"ICL bands overlap: early {list(early)}, late {list(late)}.",
            "make the early band end before the late band starts.",
        )

    def scale(band: Sequence[float], low: int) -> Band:
        a = min(max(int(round(window * band[0] / context)), low), window - 1)
        b = min(max(int(round(window * band[1] / context)), a), window - 1)
        return a, b

    e = scale(early, 0)
    if e[1] >= window - 1:
        e = (min(e[0], window - 2), window - 2)
    return e, scale(late, e[1] + 1)


def icl_score(
    losses: np.ndarray,
    late: int | Band | None = None,
    early: int | Band | None = None,
    per_window: bool = False,
) -> float | np.ndarray:
    """In-context-learning score: mean loss in a late band of positions minus mean loss in
    an early band (negative = the model uses its context).

    `losses [n_windows, window]` per-token next-token losses (column `p` = loss predicting
    token `p+1`). `early` / `late` are a column or an inclusive `(start, end)` band of
    columns; both default to `icl_bands(window)` (tokens 40-60 vs 450-550 of 1024, scaled).
    Returns the mean over windows, or `[n_windows]` with `per_window`.
    """
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 2:
        raise SeedscopeError(
            f"ICL score needs losses [n_windows, window], got shape {losses.shape}.",
            "pass a 2-d per-token loss array.",
        )
    d_early, d_late = icl_bands(losses.shape[1])
    early = d_early if early is None else early
    late = d_late if late is None else late

    def band_mean(band: int | Band) -> np.ndarray:
        a, b = (band, band) if np.isscalar(band) else band  # type: ignore[misc]
        return losses[:, int(a) : int(b) + 1].mean(axis=1)

    diff = band_mean(late) - band_mean(early)
    return diff if per_window else float(diff.mean())


# --------------------------------------------------------------------------------------
# Phase-change detection
# --------------------------------------------------------------------------------------


def _from_log(x: float) -> float:
    return float(np.exp(x) - 1.0)


def _sigmoid(x: np.ndarray, lo: float, hi: float, mid: float, width: float) -> np.ndarray:
    return lo + (hi - lo) * 0.5 * (1.0 + np.tanh((x - mid) / (2.0 * width)))


def fit_sigmoid(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares logistic fit `y = lo + (hi-lo) / (1 + exp(-(x-mid)/width))`, with the
    midpoint kept inside the data and the width between a tenth of the smallest spacing and
    the data range; multi-start over midpoints for robustness. Returns (params, sse)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    span = float(x.max() - x.min())
    gaps = np.diff(np.sort(x))
    w_min = max(float(gaps[gaps > 0].min()) / 10, 1e-3 * span)
    k = max(1, len(y) // 8)
    lo0, hi0 = float(np.median(y[:k])), float(np.median(y[-k:]))
    amp = max(abs(hi0 - lo0), float(np.ptp(y)), 1e-9)
    lower = [y.min() - amp, y.min() - amp, x.min(), w_min]
    upper = [y.max() + amp, y.max() + amp, x.max(), span]
    best, best_sse = None, np.inf
    for mid0 in np.quantile(x, [0.2, 0.35, 0.5, 0.65, 0.8]):
        p0 = [lo0, hi0, mid0, max(span / 20, w_min * 2)]
        try:
            p, _ = optimize.curve_fit(
                _sigmoid, x, y, p0=p0, bounds=(lower, upper), maxfev=2000, method="trf"
            )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((_sigmoid(x, *p) - y) ** 2))
        if sse < best_sse:
            best, best_sse = p, sse
    if best is None:  # every start failed: fall back to the steepest finite difference
        slope = np.diff(y) / np.diff(x)
        i = int(np.argmax(np.abs(slope)))
        best = np.array([lo0, hi0, (x[i] + x[i + 1]) / 2, w_min])
        best_sse = float(np.sum((_sigmoid(x, *best) - y) ** 2))
    return np.asarray(best, float), best_sse


@dataclass(frozen=True)
class PhaseChange:
    """A logistic fit of a metric over training, and whether it counts as a jump.

    step: the schedule step nearest the fitted midpoint (steepest point on the log-step
    axis); midpoint: the fitted midpoint (continuous, in steps); onset / end: where the
    fitted sigmoid has done 10% / 90% of its change; max_slope_step: model-free check, the
    later end of the steepest finite-difference interval of the (mean) curve on the
    log-step axis; ci_low / ci_high: percentile bootstrap CI of the midpoint over
    resampled eval sequences (NaN without per-sequence data or when no jump); lo / hi /
    width: the fitted plateaus and width (log-step units); r2: fit quality; amplitude:
    |hi - lo|; detected: amplitude >= the minimum, r2 >= the minimum, the 10-90% rise
    shorter than `max_width_fraction` of the log-step range, and both plateaus observed
    (`min_plateau_points` checkpoints beyond 2 widths each side); reason: why not, else "".
    """

    step: int
    midpoint: float
    onset: float
    end: float
    max_slope_step: int
    ci_low: float
    ci_high: float
    lo: float
    hi: float
    width: float
    r2: float
    amplitude: float = float("nan")
    detected: bool = True
    reason: str = ""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _phase_inputs(steps: Sequence[int] | np.ndarray, values: np.ndarray):  # type: ignore[no-untyped-def]
    steps_a = np.asarray(steps, dtype=float)
    vals = np.asarray(values, dtype=float)
    if vals.ndim == 1:
        vals = vals[:, None]
    if vals.ndim != 2 or vals.shape[0] != steps_a.size or steps_a.size < 5:
        raise SeedscopeError(
            f"values must be [n_steps] or [n_steps, n_seqs] with n_steps = {steps_a.size} >= 5; "
            f"got shape {np.shape(values)}.",
            "pass one row per checkpoint step (at least 5 steps).",
        )
    if np.any(np.diff(steps_a) <= 0) or not np.all(np.isfinite(vals)):
        raise SeedscopeError(
            "Steps must increase strictly and values be finite.", "sort steps; drop NaN rows."
        )
    return steps_a, vals


def bootstrap_midpoints(
    steps: Sequence[int] | np.ndarray, values: np.ndarray, n_boot: int = 200, seed: int = 0
) -> np.ndarray:
    """Midpoints (log-step units, `log(step+1)`) of logistic fits to `n_boot` resamples of
    the eval sequences: `values [n_steps, n_seqs]`, columns drawn with replacement with
    `numpy.random.default_rng(seed)`. Returns `[n_boot]` (empty for one sequence)."""
    steps_a, vals = _phase_inputs(steps, values)
    x = log_step(steps_a)
    n_seqs = vals.shape[1]
    if n_seqs < 2 or n_boot < 1:
        return np.empty(0)
    rng = np.random.default_rng(seed)
    mids = np.empty(n_boot)
    for b in range(n_boot):
        cols = rng.integers(0, n_seqs, n_seqs)
        mids[b] = fit_sigmoid(x, vals[:, cols].mean(axis=1))[0][2]
    return mids


def fit_phase_change(
    steps: Sequence[int] | np.ndarray,
    values: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    min_amplitude: float = 0.1,
    min_r2: float = 0.8,
    max_width_fraction: float = 0.5,
    return_boot: bool = False,
    min_plateau_points: int = 2,
) -> PhaseChange | tuple[PhaseChange, np.ndarray]:
    """Logistic fit of a metric on the `log(step+1)` axis and the verdict: jump or not.

    `steps [n_steps]` (the checkpoint schedule, any spacing, 0 allowed); `values
    [n_steps]` (one curve) or `[n_steps, n_seqs]` (per eval sequence; the curve is their
    mean and the midpoint's CI comes from `bootstrap_midpoints`, only for a detected jump).
    A jump needs `|hi - lo| >= min_amplitude` (metric units), `r2 >= min_r2`, and its 10-90%
    rise (`2 ln 9` widths) within `max_width_fraction` of the log-step range: a flat or
    noisy curve fails the first two, a steady trend across the whole schedule the third.
    Both plateaus must be observed: at least `min_plateau_points` checkpoints at or before
    `mid - 2 width` and at or after `mid + 2 width` (a jump at the first or last checkpoint
    only, e.g. the initialisation step or one odd final value, is an edge, not a change).
    `return_boot=True` also returns the bootstrap midpoints (log-steps; empty when no jump).
    """
    steps_a, vals = _phase_inputs(steps, values)
    x = log_step(steps_a)
    y = vals.mean(axis=1)
    p, sse = fit_sigmoid(x, y)
    lo, hi, mid, width = map(float, p)
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else 0.0
    slope = np.abs(np.diff(y) / np.diff(x))
    max_slope_step = int(steps_a[int(np.argmax(slope)) + 1])
    sched_step = int(steps_a[int(np.argmin(np.abs(x - mid)))])
    dx = width * np.log(9.0)  # logistic goes 10% -> 90% over 2*ln(9)*width
    amplitude = abs(hi - lo)
    reasons = []
    if amplitude < min_amplitude:
        reasons.append(f"amplitude {amplitude:.3g} < {min_amplitude:g}")
    if r2 < min_r2:
        reasons.append(f"fit r2 {r2:.2f} < {min_r2:g}")
    if 2 * dx > max_width_fraction * (x[-1] - x[0]):
        reasons.append(f"rise spans > {max_width_fraction:.0%} of the log-step range")
    before = int(np.sum(x <= mid - 2 * width))
    after = int(np.sum(x >= mid + 2 * width))
    if min(before, after) < min_plateau_points:
        reasons.append(
            f"a plateau has < {min_plateau_points} checkpoints ({before} before, {after} after)"
        )
    detected = not reasons
    ci_low = ci_high = float("nan")
    mids = np.empty(0)
    if detected:
        mids = bootstrap_midpoints(steps_a, vals, n_boot, seed)
        if mids.size:
            a = (1 - ci) / 2
            ci_low, ci_high = (_from_log(q) for q in np.quantile(mids, [a, 1 - a]))
    change = PhaseChange(
        step=sched_step,
        midpoint=_from_log(mid),
        onset=_from_log(mid - dx),
        end=_from_log(mid + dx),
        max_slope_step=max_slope_step,
        ci_low=ci_low,
        ci_high=ci_high,
        lo=lo,
        hi=hi,
        width=width,
        r2=r2,
        amplitude=amplitude,
        detected=detected,
        reason="; ".join(reasons),
    )
    return (change, mids) if return_boot else change


def detect_phase_change(
    steps: Sequence[int] | np.ndarray,
    values: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    min_amplitude: float = 0.1,
    min_r2: float = 0.8,
    max_width_fraction: float = 0.5,
    min_plateau_points: int = 2,
) -> PhaseChange | None:
    """The jump of a metric over training, or None when there is none (see
    `fit_phase_change` for the fit, the criteria and the CI)."""
    fit = fit_phase_change(
        steps,
        values,
        n_boot,
        seed,
        ci,
        min_amplitude,
        min_r2,
        max_width_fraction,
        min_plateau_points=min_plateau_points,
    )
    assert isinstance(fit, PhaseChange)
    return fit if fit.detected else None


def training_loss_bump(
    steps: Sequence[int] | np.ndarray,
    loss: np.ndarray,
    smooth: float = 0.25,
    grid: int = 400,
    min_depth: float = 0.02,
) -> dict[str, float] | None:
    """The non-convex stretch of a training-loss curve on the `log(step+1)` axis.

    On a log-step axis a loss curve normally falls from its initial plateau (concave knee),
    then flattens convexly; the induction-head phase change adds a plateau-then-drop bump,
    a later stretch where the curve is concave. The curve `loss [n_steps]` is linearly
    interpolated onto a uniform log-step grid, smoothed with a Gaussian of sd `smooth`
    (log-step units) and differentiated twice. Concave stretches (negative second
    derivative) that end by the steepest point of the initial drop (the steepest descent
    before 80% of the total drop is done) are the initial knee and are skipped; of
    the rest, the one with the largest concavity mass (integral of -d2: the extra slope
    gained, in nats per log-step) wins if that mass is >= `min_depth` times the curve's
    total drop. A concave stretch runs from the plateau to the steepest point of the drop;
    the window is that stretch mirrored about the steepest point (the drop's convex half).
    Returns `{"start", "end"}` (schedule steps bracketing the window), `"steepest"`
    (schedule step nearest the steepest descent) and `"mass"`, or None when no bump.
    """
    steps_a = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    if y.shape != steps_a.shape or steps_a.size < 5:
        raise SeedscopeError(
            f"loss must be [n_steps] matching steps ({steps_a.size} >= 5), got {y.shape}.",
            "pass one loss per checkpoint step.",
        )
    x = log_step(steps_a)
    xg = np.linspace(x[0], x[-1], grid)
    h = xg[1] - xg[0]
    yg = gaussian_filter1d(np.interp(xg, x, y), smooth / h, mode="nearest")
    d1 = np.gradient(yg, h)
    d2 = np.gradient(d1, h)
    concave = d2 < 0
    # runs of consecutive concave grid points
    edges = np.flatnonzero(np.diff(np.concatenate([[0], concave.astype(int), [0]])))
    runs = list(zip(edges[::2], edges[1::2], strict=True))
    # the initial knee: concave stretches ending by the steepest point of the initial drop
    # (the steepest descent before the curve has done 80% of its total change)
    half_done = np.abs(yg - yg[0]) < 0.8 * abs(yg[-1] - yg[0])
    knee = int(np.argmin(np.where(half_done, d1, np.inf))) if half_done.any() else 0
    runs = [(a, b) for a, b in runs if b > knee + 1]
    if not runs:
        return None
    masses = [float(-d2[a:b].sum() * h) for a, b in runs]
    i = int(np.argmax(masses))
    drop = max(float(np.ptp(yg)), 1e-12)
    if masses[i] < min_depth * drop:
        return None
    a, b = runs[i]
    b = min(b, grid - 1)
    steep = a + int(np.argmin(d1[a : b + 1]))  # the concave stretch ends at the steepest drop
    x_start, x_end = xg[a], min(xg[-1], 2 * xg[steep] - xg[a])  # symmetric about it
    start_step = steps_a[x <= x_start + 1e-12].max()
    end_step = steps_a[x >= x_end - 1e-12].min()
    steep_step = steps_a[int(np.argmin(np.abs(x - xg[steep])))]
    return {
        "start": float(start_step),
        "end": float(end_step),
        "steepest": float(steep_step),
        "mass": masses[i],
    }


def schedule_index(steps: Sequence[int] | np.ndarray, step: float) -> int:
    """Index of the schedule step nearest `step` on the log-step axis."""
    return int(np.argmin(np.abs(log_step(steps) - np.log(float(step) + 1.0))))


def centred_training_loss(
    log_steps: Sequence[int] | np.ndarray,
    log_loss: np.ndarray,
    at_steps: Sequence[int] | np.ndarray,
    min_half_width: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Training loss at checkpoint steps, estimated without a shift.

    `log_steps [n]` / `log_loss [n]`: the per-update training loss (update `s` logged at
    step `s`); `at_steps [m]`: where to estimate it. At each step `s` the estimate is a
    local linear fit of the logged loss over `[s - h, s + h]` evaluated at `s`, with `h` half
    the smaller gap to the neighbouring checkpoints (at least `min_half_width`; one-sided
    at the ends of the log, where the linear fit still centres the estimate on `s`). A
    backward mean over `(previous checkpoint, s]` would instead report the loss of about
    half an interval earlier, shifting every feature early where checkpoints are sparse.
    Steps with fewer than 2 logged updates in their window are dropped. Returns
    (steps, loss).
    """
    ls = np.asarray(log_steps, dtype=float)
    ll = np.asarray(log_loss, dtype=float)
    at = np.asarray(at_steps, dtype=float)
    if ls.shape != ll.shape or ls.ndim != 1:
        raise SeedscopeError("log_steps and log_loss must be 1-d and match.", "pass the log.")
    order = np.argsort(ls, kind="stable")
    ls, ll = ls[order], ll[order]
    gaps = np.diff(at)
    out_s, out_l = [], []
    for i, s in enumerate(at):
        near = gaps[max(i - 1, 0) : i + 1]  # gaps to the previous and the next checkpoint
        h = max(float(near.min()) / 2 if near.size else min_half_width, min_half_width)
        lo, hi = np.searchsorted(ls, s - h, "left"), np.searchsorted(ls, s + h, "right")
        xs, ys = ls[lo:hi], ll[lo:hi]
        if xs.size < 2:
            continue
        if np.ptp(xs) == 0:
            est = float(ys.mean())
        else:
            est = float(np.polyfit(xs - s, ys, 1)[1])  # the line's value at s
        out_s.append(s)
        out_l.append(est)
    return np.asarray(out_s), np.asarray(out_l)


def signed_lags(
    reference: float,
    other: float,
    reference_boot: np.ndarray | None = None,
    other_boot: np.ndarray | None = None,
    ci: float = 0.95,
) -> dict[str, float]:
    """Signed lag `log(other+1) - log(reference+1)` (log-steps; > 0: `other` comes later)
    with a percentile CI from the bootstrap midpoints (log-step units, as returned by
    `bootstrap_midpoints`) of either or both. Independent bootstraps are paired draw by draw
    (the two metrics use different sequences). A side without a bootstrap is held fixed."""
    lag = float(np.log(other + 1.0) - np.log(reference + 1.0))
    rb = np.asarray(reference_boot if reference_boot is not None else [], float)
    ob = np.asarray(other_boot if other_boot is not None else [], float)
    if not (np.isfinite(lag) and (rb.size or ob.size)):
        return {"lag": lag, "ci_low": float("nan"), "ci_high": float("nan")}
    n = max(rb.size, ob.size)
    r = rb[:n] if rb.size else np.full(n, np.log(reference + 1.0))
    o = ob[:n] if ob.size else np.full(n, np.log(other + 1.0))
    m = min(r.size, o.size)
    a = (1 - ci) / 2
    low, high = np.quantile(o[:m] - r[:m], [a, 1 - a])
    return {"lag": lag, "ci_low": float(low), "ci_high": float(high)}


def coincidence_test(
    df: pd.DataFrame,
    a: str,
    b: str,
    by: str = "size",
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Do two event steps of the same run go together more than those of different runs?

    `df` has one row per run with steps in columns `a` and `b` (NaN = no event; those runs
    are dropped) and a group column `by` (size). On the `log(step+1)` axis: `matched` = mean
    |b - a| over runs; `mismatched` = mean |b_j - a_i| over pairs of *different* runs of the
    same group (the null: seeds paired at random, the size kept, so a size effect cannot pose
    as coincidence); `r` = Pearson correlation of a and b after centring each within its
    group; `p_value`: one-sided permutation p of `matched` being this small when b is
    shuffled among the runs of each group (`n_perm` shuffles, `default_rng(seed)`);
    `r_p_value`: two-sided permutation p of |r| from the same shuffles. Only groups with
    >= 2 runs are tested: `n` counts their runs, `n_dropped` the runs with both events in
    smaller groups; `n_arrangements` is the number of distinct shufflings (the product of
    the groups' factorials: 5 seeds of one size give 120, so p cannot go below 1/120 and
    repeated shuffles are not new evidence). NaN where fewer than 3 runs are tested.
    """
    from math import factorial, prod

    d = df[[a, b, by]].dropna()
    nan = float("nan")
    groups = [g for _, g in d.groupby(by, sort=False) if len(g) >= 2]
    n_tested = int(sum(len(g) for g in groups))
    out: dict[str, float] = {
        "n": float(n_tested),
        "n_dropped": float(len(d) - n_tested),
        "n_arrangements": float(prod(factorial(len(g)) for g in groups)) if groups else nan,
    }
    if n_tested < 3:
        out.update(matched=nan, mismatched=nan, r=nan, p_value=nan, r_p_value=nan)
        return out
    xa = [np.log(g[a].to_numpy(float) + 1.0) for g in groups]
    xb = [np.log(g[b].to_numpy(float) + 1.0) for g in groups]
    matched = float(np.mean(np.concatenate([np.abs(q - p) for p, q in zip(xa, xb, strict=True)])))
    mism = [
        np.abs(q[None, :] - p[:, None])[~np.eye(p.size, dtype=bool)]
        for p, q in zip(xa, xb, strict=True)
    ]
    ca = np.concatenate([p - p.mean() for p in xa])
    cb = np.concatenate([q - q.mean() for q in xb])
    denom = float(np.sqrt((ca**2).sum() * (cb**2).sum()))
    r = float((ca * cb).sum() / denom) if denom > 0 else nan
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    null_r = np.empty(n_perm)
    for i in range(n_perm):
        shuffled = [rng.permutation(q) for q in xb]
        null[i] = np.mean(
            np.concatenate([np.abs(q - p) for p, q in zip(xa, shuffled, strict=True)])
        )
        cs = np.concatenate([q - q.mean() for q in shuffled])
        null_r[i] = (ca * cs).sum() / denom if denom > 0 else nan
    out.update(
        matched=matched,
        mismatched=float(np.mean(np.concatenate(mism))),
        r=r,
        p_value=float((1 + np.sum(null <= matched + 1e-12)) / (n_perm + 1)),
        r_p_value=(
            float((1 + np.sum(np.abs(null_r) >= abs(r) - 1e-12)) / (n_perm + 1))
            if np.isfinite(r)
            else nan
        ),
    )
    return out


# --------------------------------------------------------------------------------------
# Across runs
# --------------------------------------------------------------------------------------


def phase_change_summary(df: pd.DataFrame, value: str = "step", by: str = "size") -> pd.DataFrame:
    """Spread of the phase-change step across seeds, per group.

    `df` has one row per run with columns `by` and `value`. Returns per group: `n, mean,
    sd` (ddof=1), `min, max, range`, and `log_mean, log_sd` on the `log(step+1)` axis.
    """
    for col in (by, value):
        if col not in df.columns:
            raise SeedscopeError(
                f"Column {col!r} missing.", f"pass a frame with {by!r}, {value!r}."
            )
    rows = []
    for key, g in df.groupby(by, sort=False):
        v = g[value].to_numpy(float)
        lv = np.log(v + 1)
        rows.append(
            {
                by: key,
                "n": v.size,
                "mean": v.mean(),
                "sd": v.std(ddof=1) if v.size > 1 else np.nan,
                "min": v.min(),
                "max": v.max(),
                "range": np.ptp(v),
                "log_mean": lv.mean(),
                "log_sd": lv.std(ddof=1) if v.size > 1 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def compare_sizes(
    df: pd.DataFrame, a: str = "small", b: str = "medium", value: str = "step", by: str = "size"
) -> dict[str, float]:
    """Size `b` minus size `a` in phase-change step: difference of means (steps and
    log-steps) and a two-sided Mann-Whitney U p-value (exact for small groups)."""
    va = df.loc[df[by] == a, value].to_numpy(float)
    vb = df.loc[df[by] == b, value].to_numpy(float)
    if va.size == 0 or vb.size == 0:
        raise SeedscopeError(f"Need runs of both sizes {a!r} and {b!r}.", f"check column {by!r}.")
    p = float(stats.mannwhitneyu(vb, va, alternative="two-sided").pvalue)
    return {
        "n_a": va.size,
        "n_b": vb.size,
        "mean_diff": float(vb.mean() - va.mean()),
        "log_mean_diff": float(np.log(vb + 1).mean() - np.log(va + 1).mean()),
        "mannwhitney_p": p,
    }


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_head_heatmap(scores: pd.DataFrame, metric: str = "induction", title: str = ""):  # type: ignore[no-untyped-def]
    """Heatmap of a head score (rows `layer.head`, columns checkpoint step) for one run.

    `scores` has columns `step, layer, head, <metric>` (e.g. `head_scores` outputs with a
    `step` column added). Returns a Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = scores.copy()
    df["head_name"] = _head_names(df)
    order = df.drop_duplicates("head_name").sort_values(["layer", "head"])["head_name"]
    mat = df.pivot_table(index="head_name", columns="step", values=metric).loc[list(order)]
    fig, ax = plt.subplots(
        figsize=(min(7.2, max(6, 0.18 * mat.shape[1] + 2)), max(3, 0.22 * len(mat) + 1))
    )
    sns.heatmap(mat, ax=ax, cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": f"{metric} score"})
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("head (layer.head)")
    ax.set_title(title or f"{metric} score per head over training")
    fig.tight_layout()
    return fig


# y-axis label (with unit) of each quantity `plot_induction_over_training` can draw.
Y_LABELS = {
    "induction": "induction score (attention weight)",
    "copy_loss_ratio": "second-copy / first-copy loss (ratio)",
    "icl": "ICL score: late minus early token loss (nats)",
}


def plot_induction_over_training(
    curves: pd.DataFrame,
    detected: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    run_order: Sequence[str] | None = None,
    value: str = "induction",
    title: str = "Best induction head over training",
):  # type: ignore[no-untyped-def]
    """Best-head induction score against step (log scale), all seeds overlaid.

    `curves` has columns `run, step, <value>` (e.g. the max over heads per checkpoint);
    `detected` maps run -> detected phase-change step (drawn as a dashed line); `labels`
    maps run -> legend label (e.g. `Run.label`, which names the seed); colours come from
    `seedscope.core.plots.run_colors(run_order)`.
    """
    import matplotlib.pyplot as plt

    from seedscope.core.plots import run_colors, set_log_step_axis

    runs = list(run_order) if run_order is not None else list(dict.fromkeys(curves["run"]))
    colors = run_colors(runs)
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        g = curves[curves["run"] == run].sort_values("step")
        if g.empty:
            continue
        ax.plot(g["step"], g[value], color=colors[run], label=labels.get(run, run), lw=1.5)
        if detected and run in detected:
            ax.axvline(float(detected[run]), color=colors[run], ls="--", lw=1)
    set_log_step_axis(ax, curves["step"])
    ax.set_xlabel("training step (log scale)")
    ax.set_ylabel(Y_LABELS.get(value, value))
    ax.set_title(title + ("  (dashed: detected phase change)" if detected else ""))
    ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# The per-checkpoint measurement, taken inside the sweep unit
# --------------------------------------------------------------------------------------


# The version of the induction probe's tables: part of its digest, so tables a sweep made
# with older code are recomputed, not reused.
PROBE_FORMAT = 1


@dataclass(frozen=True, eq=False)
class InductionProbe:
    """Analysis 6's measurements of one checkpoint (`sweep.CheckpointProbe`), so the stage
    reads tables, never weights. Tables: `scores` (`head_scores(per_sequence=True)`, one row
    per sequence x head), `copy` (per-sequence first/second-copy loss), `icl` (per-window
    ICL score) and `all_ids` (the same probe over every id: best head's score, copy-loss
    ratio; the stage reports it at the final step). Probe ids: `probe_token_ids(counts, ...)`; `counts` None = all."""

    tokenizer_dir: str
    counts: np.ndarray | None
    min_count: int
    n_seqs: int
    half_len: int
    seed: int
    batch_size: int
    icl_windows: np.ndarray
    icl_early: tuple[int, int]
    icl_late: tuple[int, int]
    steps: frozenset[int]
    threads: int = 1  # torch threads while measuring (in the digest: sums may differ)
    name: str = "induction"

    def digest(self) -> str:
        import hashlib
        import json

        from seedscope.core.io import folder_files

        files = folder_files(self.tokenizer_dir)
        h = hashlib.sha256(f"format {PROBE_FORMAT}".encode())  # raise when the tables change
        for p in files:
            h.update(p.name.encode() + p.read_bytes())
        if self.counts is not None:
            h.update(np.ascontiguousarray(self.counts, dtype=np.int64).tobytes())
        h.update(str(self.icl_windows.shape).encode())
        h.update(np.ascontiguousarray(self.icl_windows, dtype=np.int64).tobytes())
        keys = ("min_count", "n_seqs", "half_len", "seed", "batch_size", "icl_early",
                "icl_late", "threads")  # fmt: skip
        h.update(json.dumps({k: getattr(self, k) for k in keys}, default=list).encode())
        return h.hexdigest()[:16]

    def sequences(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(probe sequences over the allowed ids, the same over every id, number of ids
        allowed)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        special = sorted(set(tokenizer.all_special_ids))
        vocab = model.config.vocab_size
        allowed = probe_token_ids(self.counts, vocab, self.min_count, special)
        args = (vocab, self.n_seqs, self.half_len, self.seed, special[0], special)
        seqs = repeated_random_tokens(*args, allowed)
        return seqs, repeated_random_tokens(*args), int(allowed.size)

    def measure(self, model: torch.nn.Module) -> dict[str, pd.DataFrame]:
        from seedscope.logprobs.engine import torch_threads

        with torch_threads(self.threads):
            return self._measure(model)

    def _measure(self, model: torch.nn.Module) -> dict[str, pd.DataFrame]:
        from seedscope.logprobs.engine import token_logprobs

        seqs, seqs_all, n_ids = self.sequences(model)
        with torch.inference_mode():
            measured = head_scores(model, seqs, self.batch_size, per_sequence=True)
        scores = measured.heads
        copy = pd.DataFrame(
            {
                "first_copy_loss": measured.first_copy_loss,
                "second_copy_loss": measured.second_copy_loss,
            }
        )
        bands = icl_bands(self.icl_windows.shape[1] - 1, self.icl_early, self.icl_late)
        lp = token_logprobs(model, self.icl_windows, batch_size=self.batch_size, device="cpu")
        icl = icl_score(-lp[:, 1:], early=bands[0], late=bands[1], per_window=True)
        with torch.inference_mode():
            every = head_scores(model, seqs_all, self.batch_size)
        all_ids = pd.DataFrame(
            {
                "induction": [float(every.heads["induction"].max())],
                "copy_loss_ratio": [every.copy_loss_ratio],
            }
        )
        info = pd.DataFrame(
            {"n_ids": [n_ids], "accidental_repeats": [accidental_repeat_fraction(seqs)]}
        )
        return {
            "scores": scores, "copy": copy, "icl": pd.DataFrame({"icl": icl}),
            "all_ids": all_ids, "info": info,
        }  # fmt: skip
