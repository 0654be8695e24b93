"""Analysis 5: is each token's loss trajectory over training flat, smooth, S-shaped or
non-monotone, and does the answer (and the transition step) depend on the seed?

Every curve is a token's loss (nats) at each checkpoint, on the step axis
`x = log(step + 1)`, rescaled to `u = (x - x_first) / (x_last - x_first)` in [0, 1].
Candidate families (k = number of fitted parameters, BIC = n log(RSS/n) + k log n):

- flat: `c` (k=1)
- smooth: `c + b*exp(-r u)` or `c + b*(1 + (x - x_first))^(-p)` (k=3; monotone, no plateau
  before the change), or a logistic step with one plateau outside the data (k=4: a change
  that starts before the first or ends after the last checkpoint)
- s_shaped: `lo + (hi - lo) * sigmoid((u - m) / w)` with both plateaus inside the data,
  `0 <= m - 2w` and `m + 2w <= 1` (k=4): a plateau, a transition at step `exp(x(m)) - 1`
  of width `w`, a plateau
- non_monotone: `a + q (u - v)^2` with the vertex v inside, or a two-piece linear curve
  with slopes of opposite sign and the knee inside (k=3 / k=4)

Fitting is by variable projection: every family is linear in its level/amplitude
parameters, so for each value of the nonlinear parameters on a fine grid the best linear
parameters and the residual sum of squares of *all* tokens come from one projection
(a matrix product). This profiles the likelihood exactly up to grid resolution, is
vectorised over tokens, and cannot fail to converge. The parameters of S-shaped tokens are
then refined with `scipy.optimize.least_squares` (bounded) from the grid optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import expit

from seedscope.core.errors import SeedscopeError
from seedscope.core.stats import log_step

CLASSES = ("flat", "smooth", "s_shaped", "non_monotone")
_K = {
    "flat": 1,
    "exp": 3,
    "power": 3,
    "edge_logistic": 4,
    "logistic": 4,
    "quadratic": 3,
    "hinge": 4,
    "two_step": 6,
}
_FAMILY = {
    "flat": "flat",
    "exp": "smooth",
    "power": "smooth",
    "edge_logistic": "smooth",
    "logistic": "s_shaped",
    "quadratic": "non_monotone",
    "hinge": "non_monotone",
    "two_step": "non_monotone",
}


# --------------------------------------------------------------------------------------
# Model grids: for each model, a list of (nonlinear params, basis [n_steps, k_lin])
# --------------------------------------------------------------------------------------


@dataclass
class _Grid:
    model: str
    params: np.ndarray  # [G, n_nonlinear]
    q: np.ndarray  # [G, n_steps, k_lin] orthonormal basis of each design
    coef_map: np.ndarray  # [G, k_lin, k_lin]: linear coefs = coef_map @ (Q^T y)
    flat_q32: np.ndarray  # [n_steps, G*k_lin] float32, all bases side by side
    designs: np.ndarray  # [G, n_steps, k_lin] the design matrices themselves


def _design_grid(model: str, u: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonlinear parameter grid [G, p] and design matrices [G, n, k_lin] for a model."""
    one = np.ones_like(u)
    if model == "flat":
        return np.zeros((1, 0)), one[None, :, None]
    if model == "exp":
        rates = np.concatenate([[0.0], np.geomspace(0.05, 40, 60)])
        cols = [u if r == 0 else np.expm1(-r * u) / r for r in rates]  # r=0 -> linear limit
        return rates[:, None], np.stack([np.stack([one, c], axis=1) for c in cols])
    if model == "power":
        powers = np.geomspace(0.05, 8, 50)
        base = 1.0 + (x - x[0])
        return powers[:, None], np.stack([np.stack([one, base**-p], axis=1) for p in powers])
    if model == "logistic":
        gaps = np.diff(u)
        mids = np.linspace(0.0, 1.0, 121)
        widths = np.geomspace(max(gaps.min() / 4, 2e-3), 0.35, 30)
        m, w = np.meshgrid(mids, widths, indexing="ij")
        inside = _plateaus_observed(u, m, w)
        params = np.stack([m[inside], w[inside]], axis=1)
        designs = np.stack([np.stack([one, expit((u - a) / b)], axis=1) for a, b in params])
        return params, designs
    if model == "edge_logistic":  # a step with a plateau outside the data: monotone, smooth
        gaps = np.diff(u)
        mids = np.linspace(-0.3, 1.3, 161)
        widths = np.geomspace(max(gaps.min() / 4, 2e-3), 0.35, 30)
        m, w = np.meshgrid(mids, widths, indexing="ij")
        outside = ~_plateaus_observed(u, m, w)
        params = np.stack([m[outside], w[outside]], axis=1)
        designs = np.stack([np.stack([one, expit((u - a) / b)], axis=1) for a, b in params])
        return params, designs
    if model == "quadratic":
        verts = np.linspace(0.1, 0.9, 81)
        return verts[:, None], np.stack([np.stack([one, (u - v) ** 2], axis=1) for v in verts])
    if model == "hinge":
        knots = np.linspace(0.1, 0.9, 81)
        designs = np.stack(
            [np.stack([one, np.minimum(u - k, 0), np.maximum(u - k, 0)], axis=1) for k in knots]
        )
        return knots[:, None], designs
    if model == "two_step":  # two logistic steps (shared width), one down and one up
        mids = np.linspace(0.05, 0.95, 37)
        widths = np.geomspace(max(np.diff(u).min() / 2, 5e-3), 0.12, 5)
        params = np.array([(a, b, w) for a in mids for b in mids if b > a + 0.05 for w in widths])
        designs = np.stack(
            [np.stack([one, expit((u - a) / w), expit((u - b) / w)], axis=1) for a, b, w in params]
        )
        return params, designs
    raise ValueError(model)


def _plateaus_observed(u: np.ndarray, m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Both plateaus of a logistic (midpoint `m`, width `w`, on the rescaled axis `u`)
    inside the observed steps: `u_first <= m - 2w` and `m + 2w <= u_last`."""
    m, w = np.asarray(m, float), np.asarray(w, float)
    return (m - 2 * w >= u[0]) & (m + 2 * w <= u[-1])


def _build_grid(model: str, u: np.ndarray, x: np.ndarray) -> _Grid:
    params, designs = _design_grid(model, u, x)
    q, r = np.linalg.qr(designs)  # [G, n, k], [G, k, k]
    # designs may be near-singular (e.g. a sigmoid that is ~constant over the data):
    # pseudo-inverse of R gives the minimum-norm coefficients, and RSS stays correct
    coef_map = np.linalg.pinv(r)
    g, n, k = q.shape
    flat_q32 = np.ascontiguousarray(q.transpose(1, 0, 2).reshape(n, g * k), dtype=np.float32)
    return _Grid(model, params, q, coef_map, flat_q32, designs)


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


def _prepare(losses: np.ndarray, steps: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.asarray(losses, dtype=float)
    st = np.asarray(steps, dtype=float)
    if y.ndim not in (2, 3) or y.shape[-1] != st.size:
        raise SeedscopeError(
            f"losses must be [n_tokens, n_steps] or [n_runs, n_tokens, n_steps] with "
            f"n_steps = len(steps) = {st.size}; got shape {y.shape}.",
            "pass one column per checkpoint step.",
        )
    if st.size < 8:
        raise SeedscopeError(
            f"Only {st.size} checkpoint steps: too few to tell curve shapes apart.",
            "use at least 8 steps (the mini and CRFM schedules have ~50 or more).",
        )
    if np.any(np.diff(st) <= 0):
        raise SeedscopeError("Steps must increase strictly.", "sort the steps and their columns.")
    if not np.all(np.isfinite(y)):
        raise SeedscopeError(
            "losses contain NaN or inf.", "drop tokens with missing checkpoints first."
        )
    return y, st


def classify_trajectories(
    losses: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    run_names: Sequence[str] | None = None,
    margin: float = 6.0,
    refine: bool = True,
    n_jobs: int = 1,
    chunk: int = 1024,
    autocorrelation: float | None = None,
    return_residuals: bool = False,
    min_autocorrelation: float = 0.0,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """Classify each loss trajectory as flat / smooth / s_shaped / non_monotone by BIC.

    `losses [n_tokens, n_steps]` or `[n_runs, n_tokens, n_steps]` (nats) at `steps
    [n_steps]` (checkpoint steps, 0 allowed). Returns one row per (run, token): `run` (name
    or index; only for 3-d input), `token` (index), `class`, `model` (best family member:
    flat/exp/power/logistic/quadratic/hinge), `direction` (down/up for monotone classes,
    rise_fall/fall_rise for non_monotone, none for flat), `start_loss` / `end_loss` (fitted
    value at the first / last step), `transition_step` and `width` (log-step units; the
    logistic fit of every token, meaningful where class is s_shaped), `resid_sd` (residual sd
    of the chosen fit, sqrt(RSS/(n-k))), `resid_ar1` (lag-1 autocorrelation of the residuals
    of the closest flat-or-smooth fit), and `bic_<class>` for each class (the best member).
    Classes are tried from simple to complex (flat, smooth, s_shaped, non_monotone); a more
    complex class replaces the current one only if its BIC is lower by more than `margin`
    (6 = "strong evidence", Kass & Raftery 1995), which keeps noise from being read as shape
    when two families fit almost equally (e.g. a gentle decay and a quadratic).
    Step 0 (initialisation, ~log(vocab) for every token) dominates any curve that includes
    it; drop it (and other early columns) before classifying if the question is later
    dynamics.
    Residuals of neighbouring checkpoints are correlated (real curves wander), and an iid
    BIC then reads the wandering as shape (AR(1) noise of lag-1 correlation 0.8 on flat
    curves: ~20% "S-shaped"). So the BIC uses the effective number of independent points,
    `n_eff = n (1 - rho) / (1 + rho)`, where `rho` is `autocorrelation` or, when None, the
    median over curves of the lag-1 autocorrelation of the residuals of each curve's best
    flat-or-smooth fit (clipped to [0, 0.95]), raised to `min_autocorrelation` when lower
    (a set compared with a reference set uses the larger of its own and the reference's:
    borrowing a calmer set's value would overstate n_eff and read wander as shape);
    the value used is in `df.attrs["autocorrelation"]`, the curves' own estimate (NaN when
    `autocorrelation` was given) in `df.attrs["own_autocorrelation"]`.
    `return_residuals=True` returns `(df, residuals)`: the residuals of each chosen fit,
    shaped like `losses`.
    With `refine`, the logistic parameters of S-shaped tokens are polished with scipy
    `least_squares` (`n_jobs` > 1 runs that with joblib). Token curves are processed in
    chunks of `chunk` tokens to bound memory.
    """
    y, st = _prepare(losses, steps)
    n_runs = y.shape[0] if y.ndim == 3 else None
    flat_y = y.reshape(-1, y.shape[-1])
    x = log_step(st)
    u = (x - x[0]) / (x[-1] - x[0])
    n = x.size
    grids = {m: _build_grid(m, u, x) for m in _K}
    if autocorrelation is None:
        first = [
            _classify_chunk(flat_y[i : i + chunk], grids, u, x, margin, float(n))[0]
            for i in range(0, flat_y.shape[0], chunk)
        ]
        rho = float(np.nanmedian(pd.concat(first, ignore_index=True)["_ar1"]))
        own = float(np.clip(rho if np.isfinite(rho) else 0.0, 0.0, 0.95))
        rho = max(own, float(min_autocorrelation))
    else:
        rho, own = float(autocorrelation), float("nan")
    rho = float(np.clip(rho if np.isfinite(rho) else 0.0, 0.0, 0.95))
    n_eff = max(n * (1 - rho) / (1 + rho), float(max(_K.values()) + 2))
    parts = [
        _classify_chunk(flat_y[i : i + chunk], grids, u, x, margin, n_eff)
        for i in range(0, flat_y.shape[0], chunk)
    ]
    df = pd.concat([p[0] for p in parts], ignore_index=True).rename(columns={"_ar1": "resid_ar1"})
    fitted_all = np.concatenate([p[1] for p in parts])
    df.insert(0, "token", np.arange(len(df)) % (y.shape[-2]))
    if n_runs is not None:
        names = list(run_names) if run_names is not None else list(range(n_runs))
        if len(names) != n_runs:
            raise SeedscopeError(
                f"{len(names)} run names for {n_runs} runs.", "pass one name per run."
            )
        df.insert(0, "run", np.repeat(names, y.shape[-2]))
    if refine:
        idx = np.flatnonzero(df["class"].to_numpy() == "s_shaped")
        if idx.size:
            start = df.loc[idx, ["_lo", "_hi", "_m", "_w"]].to_numpy()
            fitted = _refine_logistic(flat_y[idx], u, start, n_jobs=n_jobs)
            df.loc[idx, ["_lo", "_hi", "_m", "_w"]] = fitted
            res = flat_y[idx] - _logistic(u[None, :], *fitted.T[:, :, None])
            df.loc[idx, "resid_sd"] = np.sqrt((res**2).sum(axis=1) / (n - _K["logistic"]))
            df.loc[idx, "start_loss"] = _logistic(u[0], *fitted.T)
            df.loc[idx, "end_loss"] = _logistic(u[-1], *fitted.T)
    span = x[-1] - x[0]
    df["transition_step"] = np.exp(x[0] + df["_m"] * span) - 1.0
    df["width"] = df["_w"] * span
    df = df.drop(columns=["_lo", "_hi", "_m", "_w"])
    front = [c for c in ("run", "token") if c in df.columns]
    rest = ["class", "model", "direction", "start_loss", "end_loss", "transition_step", "width"]
    rest += ["resid_sd", "resid_ar1"] + [f"bic_{c}" for c in CLASSES]
    out = df[front + rest].copy()
    out.attrs["autocorrelation"] = rho
    out.attrs["own_autocorrelation"] = own
    if return_residuals:  # of the chosen fit (before the logistic polish)
        return out, (flat_y - fitted_all).reshape(y.shape)
    return out


def _logistic(u, lo, hi, m, w):  # type: ignore[no-untyped-def]
    return lo + (hi - lo) * expit((u - m) / w)


def _classify_chunk(
    y: np.ndarray,
    grids: dict[str, _Grid],
    u: np.ndarray,
    x: np.ndarray,
    margin: float,
    n_eff: float,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Classify a chunk of curves `y` `[T, n]`: fit every family, pick a class by BIC with
    `margin`, and describe the chosen fit. Returns (one row per curve, the fitted curves)."""
    _, n = y.shape
    fits = _fit_families(y, grids, n_eff)
    models = list(grids)
    choice = _choose_by_bic(fits.bic, models, margin)
    fitted = _fitted_curves(y, grids, fits, models, choice)
    chosen = np.array(models)[choice]
    klass = np.array([_FAMILY[m] for m in chosen])
    k = np.array([_K[m] for m in chosen])
    resid_sd = np.sqrt(((y - fitted) ** 2).sum(axis=1) / np.maximum(n - k, 1))
    # logistic parameters of every token (reported where class is s_shaped)
    m_w = grids["logistic"].params[fits.best_g["logistic"]]
    # design = [1, sigmoid]: lo = c0, hi = c0 + c1
    c = fits.best_coef["logistic"]
    out = pd.DataFrame(
        {
            "class": klass,
            "model": chosen,
            "direction": _direction(klass, fitted),
            "start_loss": fitted[:, 0],
            "end_loss": fitted[:, -1],
            "resid_sd": resid_sd,
            "_lo": c[:, 0],
            "_hi": c[:, 0] + c[:, 1],
            "_m": m_w[:, 0],
            "_w": m_w[:, 1],
            "_ar1": _simple_fit_ar1(y, grids, fits, models),
        }
    )
    for cls in CLASSES:
        members = [m for m in models if _FAMILY[m] == cls]
        out[f"bic_{cls}"] = np.min(np.stack([fits.bic[m] for m in members], axis=1), axis=1)
    return out, fitted


@dataclass(frozen=True)
class _Fits:
    """Every family's best grid fit per curve: BIC, RSS, grid index and coefficients."""

    bic: dict[str, np.ndarray]  # model -> [T]
    rss: dict[str, np.ndarray]  # model -> [T]
    best_g: dict[str, np.ndarray]  # model -> [T] grid index
    best_coef: dict[str, np.ndarray]  # model -> [T, k]


def _fit_families(y: np.ndarray, grids: dict[str, _Grid], n_eff: float) -> _Fits:
    """Grid-search every model's nonlinear parameters (float32), then refit the chosen grid
    point exactly (float64); BIC counts `n_eff` independent points."""
    n_tok, n = y.shape
    # every design contains the constant column, so centring y leaves each RSS unchanged
    # and lets the grid search run in float32 without cancellation trouble
    mean = y.mean(axis=1)
    yc = y - mean[:, None]
    yy = (yc**2).sum(axis=1)  # [T]
    yc32 = yc.astype(np.float32)
    floor = 1e-8 * max(float(np.mean(yy)), 1e-12)
    bic, best_g, best_coef, rss_of = {}, {}, {}, {}
    for model, grid in grids.items():
        g_, _, k_ = grid.q.shape
        proj = (yc32 @ grid.flat_q32).reshape(n_tok, g_, k_)  # [T, G, k]: Q^T y per design
        rss = yy[:, None].astype(np.float32) - np.einsum("tgk,tgk->tg", proj, proj)
        if model in ("hinge", "two_step"):  # only opposite signs make a non-monotone curve
            cm = grid.coef_map.astype(np.float32)
            c1 = np.einsum("gj,tgj->tg", cm[:, 1], proj)
            c2 = np.einsum("gj,tgj->tg", cm[:, 2], proj)
            rss = np.where(c1 * c2 < 0, rss, np.inf)
        g = np.argmin(rss, axis=1)
        # exact (float64) RSS and coefficients at the chosen grid point
        proj64 = np.einsum("tn,tnk->tk", yc, grid.q[g])
        rss_best = np.maximum(yy - (proj64**2).sum(axis=1), floor)
        # Gaussian BIC with n_eff independent points (n_eff = n for iid residuals)
        bic[model] = n_eff * np.log(rss_best / n) + _K[model] * np.log(n_eff)
        rss_of[model] = rss_best
        best_g[model] = g
        coef = np.einsum("tij,tj->ti", grid.coef_map[g], proj64)
        coef[:, 0] += mean  # the first design column is the constant
        best_coef[model] = coef
    return _Fits(bic=bic, rss=rss_of, best_g=best_g, best_coef=best_coef)


def _choose_by_bic(bic: dict[str, np.ndarray], models: list[str], margin: float) -> np.ndarray:
    """Index into `models` per curve: the best member of each class, then the simplest class
    unless a more complex one beats the current choice by more than `margin` BIC units
    (classes in order of complexity)."""
    best_member = {}
    for cls in CLASSES:
        members = [j for j, m in enumerate(models) if _FAMILY[m] == cls]
        mat = np.stack([bic[models[j]] for j in members], axis=1)
        best_member[cls] = (np.array(members)[np.argmin(mat, axis=1)], mat.min(axis=1))
    choice, current = best_member["flat"][0].copy(), best_member["flat"][1].copy()
    for cls in CLASSES[1:]:
        j, b = best_member[cls]
        better = b < current - margin
        choice = np.where(better, j, choice)
        current = np.where(better, b, current)
    return choice


def _fitted_curves(
    y: np.ndarray, grids: dict[str, _Grid], fits: _Fits, models: list[str], choice: np.ndarray
) -> np.ndarray:
    """Each curve's fit under the model `choice` picks for it, `[T, n]`."""
    fitted = np.empty_like(y)
    for j, model in enumerate(models):
        sel = np.flatnonzero(choice == j)
        if sel.size:
            fitted[sel] = _curves(grids[model], fits.best_g[model][sel], fits.best_coef[model][sel])
    return fitted


def _direction(klass: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """down / up; rise_fall / fall_rise for non-monotone curves; none for flat ones."""
    direction = np.where(fitted[:, -1] < fitted[:, 0], "down", "up")
    interior_max = fitted[:, 1:-1].max(axis=1) > np.maximum(fitted[:, 0], fitted[:, -1])
    direction = np.where(
        klass == "non_monotone", np.where(interior_max, "rise_fall", "fall_rise"), direction
    )
    return np.where(klass == "flat", "none", direction)


def _simple_fit_ar1(
    y: np.ndarray, grids: dict[str, _Grid], fits: _Fits, models: list[str]
) -> np.ndarray:
    """Lag-1 autocorrelation of the residuals of each curve's closest flat-or-smooth fit:
    flexible families would soak up the wander being measured; shapes they miss inflate
    it, which errs towards fewer shape claims (the median over curves pools them)."""
    simple = [m for m in models if _FAMILY[m] in ("flat", "smooth")]
    closest = np.argmin(np.stack([fits.rss[m] for m in simple], axis=1), axis=1)
    close_fit = np.empty_like(y)
    for j, model in enumerate(simple):
        sel = np.flatnonzero(closest == j)
        if sel.size:
            close_fit[sel] = _curves(
                grids[model], fits.best_g[model][sel], fits.best_coef[model][sel]
            )
    r = y - close_fit
    r = r - r.mean(axis=1, keepdims=True)
    denom = (r**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (r[:, 1:] * r[:, :-1]).sum(axis=1) / denom, np.nan)


def _curves(grid: _Grid, g: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Fitted curves `[rows, n_steps]` from each row's grid index and linear coefficients."""
    return np.einsum("rnk,rk->rn", grid.designs[g], coef)


def _refine_logistic(
    y: np.ndarray, u: np.ndarray, start: np.ndarray, n_jobs: int = 1
) -> np.ndarray:
    """Polish logistic fits with bounded least squares; `y [T, n]`, `start [T, 4]`
    (lo, hi, m, w) -> `[T, 4]`. The midpoint stays in [0, 1] and the width in
    [min gap / 10, 1]; a failed fit, or one whose plateaus are not both observed
    (`_plateaus_observed`), keeps its grid start."""
    w_min = float(np.diff(u).min()) / 10

    def one(yi: np.ndarray, p0: np.ndarray) -> np.ndarray:
        amp = max(float(np.ptp(yi)), 1e-6)
        lower = [yi.min() - amp, yi.min() - amp, 0.0, w_min]
        upper = [yi.max() + amp, yi.max() + amp, 1.0, 1.0]
        p0 = np.clip(p0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        try:
            fit = optimize.least_squares(
                lambda p: _logistic(u, *p) - yi, p0, bounds=(lower, upper), method="trf"
            )
        except (ValueError, np.linalg.LinAlgError):
            return p0
        better = np.sum(fit.fun**2) <= np.sum((_logistic(u, *p0) - yi) ** 2)
        inside = bool(_plateaus_observed(u, fit.x[2], fit.x[3]))
        return fit.x if fit.success and better and inside else p0

    if n_jobs == 1:
        return np.array([one(yi, p0) for yi, p0 in zip(y, start, strict=True)])
    from joblib import Parallel, delayed

    chunks = np.array_split(np.arange(len(y)), max(1, min(len(y), 4 * abs(n_jobs))))
    res = Parallel(n_jobs=n_jobs)(
        delayed(lambda ix: np.array([one(y[i], start[i]) for i in ix]))(ix) for ix in chunks
    )
    return np.concatenate(res)


def estimate_noise(losses: np.ndarray, steps: Sequence[int] | np.ndarray) -> float:
    """Typical noise of real curves: median over tokens (and runs) of the residual sd of
    the BIC-chosen fit (`losses [..., n_tokens, n_steps]`, nats)."""
    return float(classify_trajectories(losses, steps, refine=False)["resid_sd"].median())


# --------------------------------------------------------------------------------------
# Validation on synthetic curves of known class
# --------------------------------------------------------------------------------------


def synthetic_trajectories(
    n_per_class: int,
    steps: Sequence[int] | np.ndarray,
    noise_sd: float,
    seed: int,
    amplitudes: np.ndarray | None = None,
    ends: np.ndarray | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Noisy loss curves of known class, shaped like token trajectories.

    Returns `(losses [4*n_per_class, n_steps], truth)` where `truth` has `class` and the
    planted `transition_step` (S-shaped only, else NaN), `start_loss`, `end_loss`. Curves
    span 2-5 nats and end at 1-5 nats; Gaussian noise of sd `noise_sd`. Shapes on
    `u = rescaled log(step+1)`:
    flat: a constant; smooth: `end + A exp(-r u)` (r in [1, 6]) or a power law in log-step;
    s_shaped: `end + A sigmoid(-(u - m)/w)`, w in [0.015, 0.06], m between the 20% and 80%
    quantiles of the checkpoints' u and with `m +- 2w` inside [0, 1] (both plateaus
    observed, the definition of the class); non_monotone: two
    logistic steps of opposite sign and their own widths (fall then rise, or rise then
    fall, a realised reversal >= 1 nat), between the 10% and 90% quantiles.
    `amplitudes` / `ends` (pools, e.g. from fits of real curves) replace the uniform draws
    of the amplitude and the final loss.
    """
    st = np.asarray(steps, dtype=float)
    x = log_step(st)
    u = (x - x[0]) / (x[-1] - x[0])
    # place transitions where the schedule has checkpoints (quantiles of the steps on u)
    q10, q20, q50, q80, q90 = np.quantile(u, [0.1, 0.2, 0.5, 0.8, 0.9])
    rng = np.random.default_rng(seed)
    n = n_per_class
    curves, rows = [], []
    for cls in CLASSES:
        for _ in range(n):
            end = rng.uniform(1, 5) if ends is None else float(rng.choice(ends))
            amp = rng.uniform(2, 5) if amplitudes is None else float(rng.choice(amplitudes))
            trans = np.nan
            if cls == "flat":
                c = np.full_like(u, rng.uniform(2, 8))
            elif cls == "smooth":
                if rng.random() < 0.5:
                    r = rng.uniform(1, 6)
                    c = end + amp * (np.exp(-r * u) - np.exp(-r)) / (1 - np.exp(-r))
                else:
                    p = rng.uniform(0.5, 3)
                    b = (1 + (x - x[0])) ** -p
                    c = end + amp * (b - b[-1]) / (b[0] - b[-1])
            elif cls == "s_shaped":
                w = rng.uniform(0.015, 0.06)  # then both plateaus inside: m +- 2w in [0, 1]
                m = rng.uniform(max(q20, 2 * w), max(min(q80, 1 - 2 * w), max(q20, 2 * w)))
                c = end + amp * expit(-(u - m) / w)
                trans = float(np.exp(x[0] + m * (x[-1] - x[0])) - 1)
            else:
                c = _two_step_curve(rng, u, end, amp, (q10, q50, q90))
            curves.append(c + rng.normal(0, noise_sd, u.size))
            rows.append(
                {"class": cls, "transition_step": trans, "start_loss": c[0], "end_loss": c[-1]}
            )
    return np.array(curves), pd.DataFrame(rows)


def _two_step_curve(
    rng: np.random.Generator, u: np.ndarray, end: float, amp: float, q: tuple[float, ...]
) -> np.ndarray:
    """Fall then rise (or rise then fall): two logistic steps of opposite sign, redrawn until
    the realised reversal (rise after the minimum, or fall after the maximum) is >= 1 nat."""
    q10, q50, q90 = q
    while True:
        m1 = rng.uniform(q10, q50)
        m2 = rng.uniform(m1 + (q90 - q10) / 4, q90)
        w1, w2 = rng.uniform(0.03, 0.08, 2)
        back = rng.uniform(1.5, 3.0)
        sign = 1.0 if rng.random() < 0.5 else -1.0  # +1: fall then rise
        c = sign * (amp * expit(-(u - m1) / w1) + back * expit((u - m2) / w2))
        reversal = c[-1] - c.min() if sign > 0 else c.max() - c[-1]
        if reversal >= 1.0:
            return c - c[-1] + end


def confusion_matrix(true: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), classes in
    the order of `CLASSES`; the diagonal is the per-class recall."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    m = sk_confusion(list(true), list(predicted), labels=list(CLASSES), normalize="true")
    return pd.DataFrame(m, index=pd.Index(CLASSES, name="true"), columns=list(CLASSES))


# --------------------------------------------------------------------------------------
# Path dependence
# --------------------------------------------------------------------------------------


def s_shaped_fraction_difference(
    divergent: pd.DataFrame,
    baseline: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    paired: bool = False,
) -> pd.DataFrame:
    """Fraction of S-shaped trajectories among seed-divergent tokens minus among a baseline
    set, with Multi-Bootstrap CIs.

    Both frames have columns `run, token, class` (one row per token and run: the
    `classify_trajectories` output for `[n_runs, n_tokens, n_steps]`). The estimate is the
    mean over runs of the per-run difference in S-shaped fraction. The same tokens are
    classified in every run, so a resample draws *token indices* once per set and uses them
    in every run (a token that is S-shaped in all runs counts once per draw, not as
    independent evidence per run), and draws runs with replacement (Sellam et al. 2022).
    Rows of the result: `scheme` "tokens" (tokens only), "runs" (runs only), "runs+tokens"
    (both: the Multi-Bootstrap, the headline), each with `estimate, ci_low, ci_high,
    divergent_frac, baseline_frac, n_runs`. `paired=True` (a baseline matched one-to-one:
    baseline token i is the match of divergent token i, same token count) resamples pairs:
    one draw of indices serves both sets, so the CI uses the matching.
    """
    for name, frame in (("divergent", divergent), ("baseline", baseline)):
        if not {"run", "token", "class"} <= set(frame.columns):
            raise SeedscopeError(
                f"{name} lacks columns run/token/class.", "pass classify_trajectories output."
            )
    runs = sorted(set(divergent["run"]) & set(baseline["run"]), key=str)
    if not runs:
        raise SeedscopeError(
            "No run appears in both sets.", "classify both sets for the same runs."
        )

    def matrix(frame: pd.DataFrame) -> np.ndarray:  # [n_runs, n_tokens] of 0/1
        wide = frame.assign(s=frame["class"] == "s_shaped").pivot_table(
            index="run", columns="token", values="s", aggfunc="first"
        )
        return wide.reindex(runs).to_numpy(dtype=float)

    sd, sb = matrix(divergent), matrix(baseline)
    if np.isnan(sd).any() or np.isnan(sb).any():
        raise SeedscopeError(
            "Some tokens are classified in some runs only.",
            "classify the same tokens in every run.",
        )
    rng = np.random.default_rng(seed)
    r = len(runs)
    fd, fb = sd.mean(axis=1), sb.mean(axis=1)  # [R] per-run fractions
    # token resamples shared by all runs: multinomial counts over the tokens of each set
    wd = rng.multinomial(sd.shape[1], np.full(sd.shape[1], 1 / sd.shape[1]), n_boot)
    if paired and sb.shape[1] != sd.shape[1]:
        raise SeedscopeError(
            f"paired sets need as many baseline ({sb.shape[1]}) as divergent "
            f"({sd.shape[1]}) tokens.",
            "pass the baseline matched one-to-one (match_baseline), in the same order.",
        )
    wb = (
        wd
        if paired
        else rng.multinomial(sb.shape[1], np.full(sb.shape[1], 1 / sb.shape[1]), n_boot)
    )
    bd = sd @ wd.T / sd.shape[1]  # [R, B]
    bb = sb @ wb.T / sb.shape[1]
    pick = rng.integers(0, r, (n_boot, r))  # [B, R] runs drawn with replacement
    cols = np.arange(n_boot)[:, None]
    by_tokens = (bd - bb).mean(axis=0)
    by_runs = (fd - fb)[pick].mean(axis=1)
    both = (bd[pick, cols] - bb[pick, cols]).mean(axis=1)
    a = (1 - ci) / 2
    rows = []
    for scheme, boot in (("tokens", by_tokens), ("runs", by_runs), ("runs+tokens", both)):
        lo, hi = np.quantile(boot, [a, 1 - a])
        rows.append(
            {
                "scheme": scheme,
                "estimate": float(np.mean(fd - fb)),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "divergent_frac": float(fd.mean()),
                "baseline_frac": float(fb.mean()),
                "n_runs": r,
            }
        )
    return pd.DataFrame(rows)


def match_baseline(
    target: np.ndarray, pool: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Indices of `pool` rows matched one-to-one to the rows of `target` (nearest neighbour
    without replacement, greedy in the order of the target rows' nearest distance).

    `target [n, f]`, `pool [m, f]` (features, e.g. mean final loss and total drop over
    seeds; each feature scaled by its sd over both sets); `exclude [m]` bool: pool rows that
    may not be used (e.g. the target tokens themselves). Needs `m - excluded >= n`.
    """
    t, p = np.asarray(target, float), np.asarray(pool, float)
    ok = np.ones(len(p), bool) if exclude is None else ~np.asarray(exclude, bool)
    if ok.sum() < len(t):
        raise SeedscopeError(
            f"{int(ok.sum())} candidate tokens to match {len(t)} targets.",
            "lower trajectories.n_divergent or raise token_losses.trajectory_tokens.",
        )
    scale = np.concatenate([t, p[ok]]).std(axis=0)
    scale[scale == 0] = 1.0
    d = np.sqrt((((t[:, None, :] - p[None, :, :]) / scale) ** 2).sum(axis=-1))  # [n, m]
    d[:, ~ok] = np.inf
    chosen = np.full(len(t), -1)
    for i in np.argsort(d.min(axis=1), kind="stable"):
        j = int(np.argmin(d[i]))
        chosen[i] = j
        d[:, j] = np.inf
    return chosen


def curve_features(
    losses: np.ndarray,
    steps: Sequence[int] | np.ndarray | None = None,
    autocorrelation: float | None = None,
) -> np.ndarray:
    """Per-token features for matching: `losses [n_runs, n_tokens, n_steps]` -> `[n_tokens,
    f]`: the mean over runs of the final loss and of the total drop (first minus last);
    with `steps`, also the median over runs of the residual sd of the chosen fit and of the
    residuals' lag-1 autocorrelation (`classify_trajectories` with `autocorrelation`,
    unrefined): the classifier's verdict depends on a curve's noise and wander as much as
    on its amplitude, so a baseline that matches only the amplitude is not like-for-like."""
    y = np.asarray(losses, float)
    feats = [y[..., -1].mean(axis=0), (y[..., 0] - y[..., -1]).mean(axis=0)]
    if steps is not None:
        df = classify_trajectories(y, steps, refine=False, autocorrelation=autocorrelation)
        shape = y.shape[:-1]
        feats.append(np.median(df["resid_sd"].to_numpy().reshape(shape), axis=0))
        ar1 = np.nan_to_num(df["resid_ar1"].to_numpy().reshape(shape), nan=0.0)
        feats.append(np.median(ar1, axis=0))
    return np.stack(feats, axis=1)


def block_resample(residuals: np.ndarray, n_curves: int, block: int, seed: int) -> np.ndarray:
    """Noise curves `[n_curves, n_steps]` built from real residual rows (`residuals
    [rows, n_steps]`), each standardised to unit sd: for each curve, consecutive blocks of
    `block` steps are copied from random rows at random offsets (a moving-block bootstrap:
    the autocorrelation within a block is kept), then the curve is re-standardised."""
    r = np.asarray(residuals, float)
    r = r - r.mean(axis=1, keepdims=True)
    sd = r.std(axis=1, keepdims=True)
    r = r[(sd[:, 0] > 0)] / sd[sd[:, 0] > 0]
    n = r.shape[1]
    block = int(min(max(block, 1), n))
    rng = np.random.default_rng(seed)
    out = np.empty((n_curves, n))
    for c in range(n_curves):
        pos = 0
        while pos < n:
            row, start = rng.integers(0, len(r)), rng.integers(0, n - block + 1)
            take = min(block, n - pos)
            out[c, pos : pos + take] = r[row, start : start + take]
            pos += take
    out -= out.mean(axis=1, keepdims=True)
    return out / np.maximum(out.std(axis=1, keepdims=True), 1e-12)


def validate_at_real_noise(
    losses: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    n_per_class: int = 100,
    quantiles: Sequence[float] = (0.5, 0.75, 0.9),
    block: int = 5,
    seed: int = 0,
    autocorrelation: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shape classifier on synthetic curves carrying the real curves' noise.

    `losses [..., n_steps]` real trajectories. They are classified; their residual sds give
    the noise levels (the `quantiles` of the residual sd over curves), their fitted
    start/end losses give the final losses and (over non-flat curves) the amplitudes, drawn
    at random for the synthetic curves, and their residuals, block-resampled (`block_resample`: the
    autocorrelation is kept), give the noise. Returns `(confusion, summary)`: `confusion`
    has one row-normalised matrix per quantile (columns `quantile, noise_sd, true_class`
    + the predicted classes); `summary` per quantile: `noise_sd, accuracy,
    s_recall` (S-shaped found as S-shaped), `s_false_rate` (other classes called S-shaped),
    `flat_s_rate` (flat curves with that noise called S-shaped: the null rate),
    `transition_error_log10` (median |error| of the recovered transition step, decades),
    `transition_error_sd_log10` (sd of that error: the fit's own spread),
    `autocorrelation` (rho the classifier used: `autocorrelation`, or estimated from the
    real curves when None, and used for the synthetic ones too).
    """
    y = np.asarray(losses, float).reshape(-1, np.shape(losses)[-1])
    real, resid = classify_trajectories(
        y, steps, refine=False, return_residuals=True, autocorrelation=autocorrelation
    )
    rho = real.attrs["autocorrelation"]
    ends = real["end_loss"].to_numpy()
    shaped = real["class"].to_numpy() != "flat"  # amplitudes of curves that have a shape
    amps = np.abs(real["start_loss"].to_numpy() - ends)[shaped]
    amps = amps[amps > 0] if (amps > 0).any() else np.array([1.0])
    noise_levels = np.quantile(real["resid_sd"].to_numpy(), quantiles)
    conf_rows, rows = [], []
    for qi, (q, sd) in enumerate(zip(quantiles, noise_levels, strict=True)):
        noise = block_resample(resid, 4 * n_per_class, block, seed + qi) * sd
        synth, truth = synthetic_trajectories(
            n_per_class, steps, 0.0, seed + qi, amplitudes=amps, ends=ends
        )
        pred = classify_trajectories(synth + noise, steps, autocorrelation=rho)
        conf = confusion_matrix(truth["class"], pred["class"])
        conf_rows.append(conf.reset_index(names="true_class").assign(quantile=q, noise_sd=sd))
        s_true = truth["class"].to_numpy() == "s_shaped"
        s_pred = pred["class"].to_numpy() == "s_shaped"
        ok = s_true & s_pred
        signed = np.log10(pred.loc[ok, "transition_step"].to_numpy() + 1) - np.log10(
            truth.loc[ok, "transition_step"].to_numpy() + 1
        )
        err = np.abs(signed)
        flat = truth["class"].to_numpy() == "flat"
        rows.append(
            {
                "quantile": q,
                "noise_sd": float(sd),
                "accuracy": float(np.mean(truth["class"].to_numpy() == pred["class"].to_numpy())),
                "s_recall": float(s_pred[s_true].mean()),
                "s_false_rate": float(s_pred[~s_true].mean()),
                "flat_s_rate": float(s_pred[flat].mean()),
                "transition_error_log10": float(np.median(err)) if ok.any() else float("nan"),
                "transition_error_sd_log10": (
                    float(np.std(signed, ddof=1)) if ok.sum() > 1 else float("nan")
                ),
                "autocorrelation": float(pred.attrs["autocorrelation"]),
            }
        )
    confusion = pd.concat(conf_rows, ignore_index=True)
    front = ["quantile", "noise_sd", "true_class"]
    return confusion[front + list(CLASSES)], pd.DataFrame(rows)


def transition_spread(classes: pd.DataFrame, min_runs: int = 2) -> pd.DataFrame:
    """For each token, how much its transition step and final loss vary across seeds.

    `classes` has columns `run, token, class, transition_step, end_loss` (the
    `classify_trajectories` output for 3-d input). Per token: `n_runs`, `n_s_shaped`; over
    the runs where it is S-shaped (when there are >= `min_runs`): `transition_sd_log10`,
    `transition_range_log10` (decades), `transition_min`, `transition_max` (steps),
    `end_loss_sd`, `end_loss_range` (nats, over those runs). Tokens S-shaped in fewer runs
    get NaN spreads.
    """
    need = {"run", "token", "class", "transition_step", "end_loss"}
    if not need <= set(classes.columns):
        raise SeedscopeError(
            f"classes lacks {sorted(need - set(classes.columns))}.",
            "pass classify_trajectories output for [n_runs, n_tokens, n_steps] losses.",
        )
    df = classes.copy()
    df["s"] = df["class"] == "s_shaped"
    base = df.groupby("token").agg(n_runs=("run", "nunique"), n_s_shaped=("s", "sum"))
    s = df[df["s"]].assign(lt=lambda d: np.log10(d["transition_step"] + 1.0))
    g = s.groupby("token")
    spread = pd.DataFrame(
        {
            "transition_sd_log10": g["lt"].std(ddof=1),
            "transition_range_log10": g["lt"].max() - g["lt"].min(),
            "transition_min": g["transition_step"].min(),
            "transition_max": g["transition_step"].max(),
            "end_loss_sd": g["end_loss"].std(ddof=1),
            "end_loss_range": g["end_loss"].max() - g["end_loss"].min(),
        }
    )
    out = base.join(spread)
    few = out["n_s_shaped"] < min_runs
    out.loc[few, spread.columns] = np.nan
    return out.reset_index()


def token_recovery_sd(
    losses: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    classes: pd.DataFrame,
    autocorrelation: float,
    n_refits: int = 40,
    block: int = 5,
    seed: int = 0,
    min_runs: int = 2,
) -> pd.DataFrame:
    """Each token's own transition-step recovery error: the spread the fit would show if
    every run shared the token's mean curve and differed only by the token's own noise.

    `losses [n_runs, n_tokens, n_steps]` and their `classes` (`classify_trajectories` of
    the same array, with `autocorrelation`). For each token S-shaped in >= `min_runs` runs:
    its clean curve is the mean over those runs of their fitted curves; its noise is those
    runs' residuals, block-resampled (`block_resample`, keeping their autocorrelation) and
    scaled to their rms; `n_refits` such curves are classified with the same
    `autocorrelation`, and `recovery_sd_log10` is the sd (decades) of the transition steps
    of those recovered as S-shaped (`n_recovered`; NaN when < 3). A pooled error measured on
    other (calmer or larger) tokens would make a token's honest spread look like a seed
    effect. Returns one row per tested token: `token, n_recovered, recovery_sd_log10`.
    """
    y, st = _prepare(losses, steps)
    if y.ndim != 3:
        raise SeedscopeError(
            f"losses must be [n_runs, n_tokens, n_steps]; got shape {y.shape}.",
            "pass the token curves of every run.",
        )
    n_runs, n_tok, n = y.shape
    cls = classes["class"].to_numpy().reshape(n_runs, n_tok) == "s_shaped"
    _, resid = classify_trajectories(
        y, st, refine=False, autocorrelation=autocorrelation, return_residuals=True
    )
    tested = np.flatnonzero(cls.sum(axis=0) >= min_runs)
    if not tested.size:
        return pd.DataFrame({"token": [], "n_recovered": [], "recovery_sd_log10": []}).astype(
            {"token": int, "n_recovered": int}
        )
    synth = np.empty((tested.size * n_refits, n))
    for i, t in enumerate(tested):
        runs = np.flatnonzero(cls[:, t])
        clean = (y[runs, t] - resid[runs, t]).mean(axis=0)
        r = resid[runs, t]
        scale = float(np.sqrt(np.mean((r - r.mean(axis=1, keepdims=True)) ** 2)))
        noise = block_resample(r, n_refits, block, seed + int(t)) * scale
        synth[i * n_refits : (i + 1) * n_refits] = clean + noise
    fit = classify_trajectories(synth, st, autocorrelation=autocorrelation)
    ok = (fit["class"].to_numpy() == "s_shaped").reshape(tested.size, n_refits)
    lt = np.log10(fit["transition_step"].to_numpy() + 1.0).reshape(tested.size, n_refits)
    n_rec = ok.sum(axis=1)
    sd = np.full(tested.size, np.nan)
    for i in range(tested.size):
        if n_rec[i] >= 3:
            sd[i] = float(np.std(lt[i, ok[i]], ddof=1))
    return pd.DataFrame({"token": tested, "n_recovered": n_rec, "recovery_sd_log10": sd})


def seed_spread_test(
    spread: pd.DataFrame, recovery_sd: float | pd.DataFrame, alpha: float = 0.05
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Is a token's transition step spread across seeds wider than the fit's own error?

    `spread`: `transition_spread` output (`n_s_shaped`, `transition_sd_log10`).
    `recovery_sd`: either the `token_recovery_sd` frame (each token's own error from
    `n_recovered` refits: the ratio of variances `s^2 / sd_t^2` is tested against
    `F(k-1, n_recovered-1)`, the refits' sd being itself an estimate; tokens without a
    recovery sd are not tested), or one sd (decades) for all tokens (`(k-1) s^2 / sd^2 ~
    chi2(k-1)`; valid only where every token's fit error equals it). The one-sided p of
    each token's s is Benjamini-Hochberg adjusted over tokens. Returns the frame with
    `recovery_sd_log10`, `p_value`, `q_value`, `wider_than_fit` and a summary: `n_tokens`
    (tested), `median_sd_log10`, `recovery_sd_log10` (median over tokens), `ratio` (median
    over tokens of sd / recovery sd), `fraction_wider` (share of tested tokens with q <
    `alpha`).
    """
    from scipy import stats as st

    from seedscope.core.stats import bh_adjust

    out = spread.copy()
    nan = float("nan")
    if isinstance(recovery_sd, pd.DataFrame):
        rec = recovery_sd.set_index("token")
        out["recovery_sd_log10"] = out["token"].map(rec["recovery_sd_log10"]).astype(float)
        out["n_recovered"] = out["token"].map(rec["n_recovered"]).fillna(0).astype(int)
    else:
        out["recovery_sd_log10"] = float(recovery_sd)
    ok = (
        out["transition_sd_log10"].notna()
        & (out["n_s_shaped"] >= 2)
        & (out["recovery_sd_log10"] > 0)
        & np.isfinite(out["recovery_sd_log10"])
    )
    k = out.loc[ok, "n_s_shaped"].to_numpy(float)
    sd = out.loc[ok, "transition_sd_log10"].to_numpy(float)
    rsd = out.loc[ok, "recovery_sd_log10"].to_numpy(float)
    out["p_value"] = nan
    out["q_value"] = nan
    out["wider_than_fit"] = False
    if not ok.any():
        return out, {
            "n_tokens": 0.0,
            "median_sd_log10": nan,
            "recovery_sd_log10": float(np.nanmedian(out["recovery_sd_log10"]))
            if out["recovery_sd_log10"].notna().any()
            else nan,
            "ratio": nan,
            "fraction_wider": nan,
        }
    if "n_recovered" in out.columns:
        p = st.f.sf(sd**2 / rsd**2, k - 1, out.loc[ok, "n_recovered"].to_numpy(float) - 1)
    else:
        p = st.chi2.sf((k - 1) * sd**2 / rsd**2, k - 1)
    out.loc[ok, "p_value"] = p
    out.loc[ok, "q_value"] = bh_adjust(p)
    out["wider_than_fit"] = out["q_value"] < alpha
    return out, {
        "n_tokens": float(ok.sum()),
        "median_sd_log10": float(np.median(sd)),
        "recovery_sd_log10": float(np.median(rsd)),
        "ratio": float(np.median(sd / rsd)),
        "fraction_wider": float(out.loc[ok, "wider_than_fit"].mean()),
    }


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_class_examples(
    losses: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    classes: pd.DataFrame,
    run_names: Sequence[str],
    labels: dict[str, str] | None = None,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    """One example token per class, every seed overlaid.

    `losses [n_runs, n_tokens, n_steps]`; `classes` from `classify_trajectories` on it
    (with `run_names`). For each class the example is drawn (with `seed`) among the tokens
    that most runs put in that class. `labels` maps run -> legend label (e.g. `Run.label`).
    """
    import matplotlib.pyplot as plt

    from seedscope.core.plots import run_colors, set_log_step_axis

    y = np.asarray(losses, dtype=float)
    colors = run_colors(list(run_names))
    labels = labels or {}
    votes = classes.groupby(["token", "class"]).size().unstack(fill_value=0)
    rng = np.random.default_rng(seed)
    ncol = 2
    nrow = int(np.ceil(len(CLASSES) / ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(7.2, 3.0 * nrow + 1.0), squeeze=False, layout="constrained"
    )
    axes = axes.flatten()
    for ax in axes[len(CLASSES) :]:
        ax.set_axis_off()
    for ax, cls in zip(axes, CLASSES, strict=False):
        if cls not in votes.columns or votes[cls].max() == 0:
            ax.set_title(f"{cls}: no token")
            ax.set_axis_off()
            continue
        best = votes.index[votes[cls] == votes[cls].max()].to_numpy()
        tok = int(rng.choice(best))
        for i, run in enumerate(run_names):
            ax.plot(steps, y[i, tok], color=colors[run], lw=1.2, label=labels.get(run, str(run)))
        set_log_step_axis(ax, steps)
        ax.set_ylabel("loss (nats)")
        ax.set_title(
            f"{cls.replace('_', '-')}: token {tok}\n({votes.loc[tok, cls]}/{len(run_names)} runs)",
            fontsize=10,
        )
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, fontsize=9, frameon=False, loc="outside lower center", ncol=2)
    fig.suptitle("Example per-token loss trajectories, all seeds")
    return fig


def plot_transition_steps(  # type: ignore[no-untyped-def]
    classes: pd.DataFrame,
    hue: str = "run",
    title: str = "",
    run_order: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
):
    """Histogram of transition steps (log scale) of S-shaped trajectories, by `hue`
    (e.g. `run`, or a `set` column for divergent vs baseline tokens). With `hue="run"`, runs
    keep the suite's colours (`run_order`, as `seedscope.core.plots.run_colors`) and the legend
    names them by `labels` (e.g. `Run.label`, which names the seed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    s = classes[classes["class"] == "s_shaped"]
    fig, ax = plt.subplots(figsize=(7, 4))
    palette = hue_order = None
    if hue == "run":
        from seedscope.core.plots import run_colors

        runs = list(run_order) if run_order is not None else list(dict.fromkeys(classes["run"]))
        named = labels or {}
        colors = run_colors(runs)
        s = s.assign(run=s["run"].map(lambda r: named.get(r, r)))
        hue_order = [named.get(r, r) for r in runs if r in set(classes["run"])]
        palette = {named.get(r, r): colors[r] for r in runs}
    sns.histplot(
        data=s,
        x="transition_step",
        hue=hue if hue in s.columns else None,
        hue_order=hue_order,
        log_scale=True,
        element="step",
        fill=False,
        ax=ax,
        palette=palette,
        common_norm=False,
        stat="density",
    )
    ax.set_xlabel("transition step (log scale)")
    ax.set_ylabel("density (per log10 step)")
    ax.set_title(title or "Transition steps of S-shaped loss trajectories")
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title(hue)
        for text in legend.get_texts():
            text.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: pd.DataFrame, noise_sd: float):  # type: ignore[no-untyped-def]
    """Row-normalised confusion matrix of the shape classifier on synthetic curves."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(
        confusion,
        annot=True,
        fmt=".2f",
        vmin=0,
        vmax=1,
        cmap="Blues",
        ax=ax,
        cbar_kws={"label": "fraction of true class"},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true (planted) class")
    ax.set_title(f"Shape classifier on synthetic curves (noise sd {noise_sd:.2f} nats)")
    fig.tight_layout()
    return fig
