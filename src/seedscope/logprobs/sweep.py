"""The checkpoint sweep: (run, step) units -> per-token log-prob files, resumable and atomic.

A unit is one checkpoint of one run: fetch -> load -> evaluate -> write -> (hub suites)
evict. Units whose file the manifest lists with a matching sha256 are skipped, so a sweep
killed at any moment (even `kill -9`) and rerun ends with the same files as an
uninterrupted one. Unit files are written atomically by whoever computes them (the driver,
or Dask workers on a shared filesystem); the manifest is written by the driver only.

Steps: `full` steps (`final`, `mid`, integers) store the whole `[n_windows, window]` grid;
`all` adds every schedule step, for which only the trajectory token subset is stored.
One output folder holds one configuration (suite, windows, trajectory subset, dtype); a
sweep into a folder made with another configuration is refused.

Checkpoint probes (`CheckpointProbe`: behaviour scores, induction-head scores) are measured
in the same unit while its model is loaded, so each checkpoint is fetched once and later
stages read tables, never weights; a probe's steps that the log-prob sweep does not cover
become probe-only units.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from seedscope.core.errors import SeedscopeError, connect_problem
from seedscope.core.io import write_json, write_npy, write_parquet
from seedscope.core.provenance import git_commit, package_versions
from seedscope.logprobs.engine import (
    _DTYPES,
    MANIFEST,
    TRAJECTORY_TOKENS,
    as_windows,
    evaluate_to_file,
    file_sha256,
    read_manifest,
    token_logprobs,
    topk_relpath,
    unit_key,
    unit_relpath,
)
from seedscope.suites.registry import Suite

FORMAT_VERSION = 1
# a unit's log-prob files and their sha256 keys in the manifest
GRID_FILES = (("file", "sha256"), ("traj_file", "traj_sha256"), ("topk_file", "topk_sha256"))


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """Everything that steers a sweep (simple typed fields, validated on creation).

    steps: list mixing 'final', 'mid', schedule integers and 'all' (every schedule step,
    trajectory subset only). batch_size: windows per forward pass. device: 'auto', 'cpu',
    'cuda[:i]'. dtype: float32 | bfloat16 | float16 (autocast). threads: torch intra-op
    threads (0 = torch default). cache_budget_gb: hub cache space the sweep may fill
    (current + prefetched checkpoint). scheduler: Dask scheduler address ('' = local).
    scheduler_timeout_s: how long to wait for it. trajectory_tokens: size of the token
    subset kept at every step (0 = none). seed: picks that subset.
    logits_budget_mb: memory for one chunk of LM-head logits. top_k: full units also keep
    the model's top-k guesses at every position, from the same forward pass (0 = none; the
    outlier tables print them).
    """

    steps: tuple[Any, ...] = ("final",)
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0
    cache_budget_gb: float = 20.0
    scheduler: str = ""
    scheduler_timeout_s: float = 10.0
    trajectory_tokens: int = 4096
    seed: int = 0
    logits_budget_mb: float = 64.0
    top_k: int = 5

    def __post_init__(self) -> None:
        steps = self.steps
        if isinstance(steps, str | int):
            steps = (steps,)
        steps = tuple(steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            _bad("steps", steps, "give e.g. steps=['final', 'mid'] or ['all'].")
        for s in steps:
            ok_str = isinstance(s, str) and (s in ("final", "mid", "all") or s.isdigit())
            ok_int = isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 0
            if not (ok_str or ok_int):
                _bad("steps", s, "each step is 'final', 'mid', 'all' or a schedule integer.")
        _positive_int(self, "batch_size", "e.g. batch_size=16 (lower it if memory runs out).")
        _nonneg_int(self, "threads", "use 0 for torch's default or a positive thread count.")
        _nonneg_int(self, "trajectory_tokens", "use 0 for none or e.g. 4096.")
        _nonneg_int(self, "seed", "use a non-negative integer seed.")
        _nonneg_int(self, "top_k", "use 0 for none or e.g. 5.")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            _bad("device", self.device, "use 'auto', 'cpu', 'cuda' or 'cuda:<index>'.")
        if self.dtype not in _DTYPES:
            _bad("dtype", self.dtype, f"use one of: {', '.join(_DTYPES)}.")
        for key in ("cache_budget_gb", "scheduler_timeout_s", "logits_budget_mb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                _bad(key, value, "use a positive number.")
        if not isinstance(self.scheduler, str):
            _bad("scheduler", self.scheduler, "use '' for local or e.g. 'tcp://host:8786'.")

    def result_params(self) -> dict[str, Any]:
        """The settings that change the numbers in a unit file (part of the params hash)."""
        return {"dtype": self.dtype, "logits_budget_mb": self.logits_budget_mb}


def _bad(key: str, value: Any, fix: str) -> None:
    raise SeedscopeError(f"Sweep setting {key}={value!r} is invalid.", fix)


def _positive_int(cfg: SweepConfig, key: str, fix: str) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        _bad(key, value, f"use a positive integer, {fix}")


def _nonneg_int(cfg: SweepConfig, key: str, fix: str) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        _bad(key, value, fix)


# ----------------------------------------------------------------------------- units


@dataclass(frozen=True, order=True)
class Unit:
    """One (run, step): `full` units store the whole grid, others the trajectory subset."""

    run: str
    step: int
    repo_id: str = field(compare=False)
    revision: str = field(compare=False)
    full: bool = field(default=True, compare=False)
    logprobs: bool = field(default=True, compare=False)  # False: a probe-only unit
    keep_grid: bool = field(default=False, compare=False)  # True: only its probes are stale

    @property
    def kind(self) -> str:
        return "full" if self.full else "traj" if self.logprobs else "probe"

    @property
    def key(self) -> str:
        return unit_key(self.run, self.step)

    @property
    def label(self) -> str:
        return f"run {self.run} step {self.step} ({self.repo_id}@{self.revision})"


def resolve_units(
    suite: Suite, runs: Sequence[str] | str, steps_spec: Sequence[Any] | str
) -> list[Unit]:
    """Units for `runs` ('all' or names) x steps, run-major, steps ascending.

    `steps_spec` mixes 'final', 'mid', schedule integers and 'all'; 'all' adds every
    schedule step as a trajectory-only unit unless the step is also named explicitly.
    """
    if isinstance(steps_spec, str | int):
        steps_spec = [steps_spec]
    if isinstance(runs, str) and runs != "all":
        runs = [runs]
    run_objs = suite.runs if runs == "all" else suite.select(list(runs)).runs
    full = {suite.resolve_step(s) for s in steps_spec if s != "all"}
    every = set(suite.steps) if "all" in steps_spec else set()
    return [
        Unit(r.name, s, r.repo_id, suite.revision(s), full=s in full)
        for r in run_objs
        for s in sorted(full | every)
    ]


class CheckpointProbe(Protocol):
    """A per-checkpoint measurement taken inside a sweep unit.

    `name` names its folder; `steps` the schedule steps it is taken at; `digest()` hashes
    everything that determines its tables (a changed digest recomputes the unit);
    `measure(model)` returns named tables. Must pickle (Dask workers run it)."""

    name: str
    steps: frozenset[int]

    def digest(self) -> str: ...

    def measure(self, model: Any) -> dict[str, pd.DataFrame]: ...


def probe_relpath(run: str, probe: str, table: str, step: int) -> str:
    """Where a probe table of one unit lives, relative to the sweep folder."""
    return f"{run}/probes/{probe}/{table}/step-{int(step)}.parquet"


def with_probe_units(units: list[Unit], probes: Sequence[Any], suite: Suite) -> list[Unit]:
    """`units` plus a probe-only unit at each probe step no unit covers, per run."""
    have = {(u.run, u.step) for u in units}
    runs = {u.run: u.repo_id for u in units}
    extra = [
        Unit(run, step, repo, suite.revision(step), full=False, logprobs=False)
        for run, repo in runs.items()
        for step in sorted({s for p in probes for s in p.steps})
        if (run, step) not in have
    ]
    return sorted(units + extra)


def read_probe_tables(
    out_dir: str | os.PathLike[str], probe: str, table: str, runs: Sequence[str],
    steps: Sequence[int], digest: str,
) -> dict[tuple[str, int], pd.DataFrame]:  # fmt: skip
    """`{(run, step): table}` of `probe` from a sweep folder, every unit present and made
    with this `digest`; otherwise a one-line error naming the stage to run."""
    out = Path(out_dir)
    units = read_manifest(out).get("units", {})
    tables = {}
    for run in runs:
        for step in steps:
            entry = units.get(unit_key(run, step), {}).get("probes", {}).get(probe)
            if not entry or entry.get("digest") != digest or table not in entry["files"]:
                raise SeedscopeError(
                    f"The sweep in {out} holds no {probe!r} table {table!r} for run {run!r} "
                    f"step {step} made with these settings.",
                    "rerun stage `token_losses` (it measures the probes while each checkpoint "
                    "is loaded): `dvc repro`.",
                )
            tables[(run, int(step))] = pd.read_parquet(out / entry["files"][table][0])
    return tables


def choose_trajectory_tokens(n_windows: int, window: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct flat indices into the `[n_windows * window]` grid, sorted, never at
    position 0 of a window (no log-prob there); all of them when fewer exist."""
    valid = n_windows * (window - 1)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(valid, size=min(n, valid), replace=False))
    # index among valid positions -> (window, position >= 1) -> flat index
    return (pick // (window - 1)) * window + pick % (window - 1) + 1


# ----------------------------------------------------------------------------- stores


class CheckpointStore(Protocol):
    """Where models come from: fetch (maybe download) / load / evict one unit."""

    def fetch(self, unit: Unit) -> bool: ...  # True if it was already cached

    def load(self, unit: Unit) -> Any: ...

    def evict(self, unit: Unit) -> int: ...

    def nbytes(self, unit: Unit) -> int: ...


@dataclass(frozen=True)
class HubStore:
    """Checkpoints through `seedscope.models.checkpoints` (hub API, offline-aware)."""

    suite: Suite
    cache_dir: str | None = None

    @property
    def evicts(self) -> bool:
        return self.suite.local_cache is None

    def fetch(self, unit: Unit) -> bool:
        from seedscope.models.checkpoints import cached_steps, fetch_checkpoint

        present = unit.step in cached_steps(self.suite, unit.run, self.cache_dir)
        fetch_checkpoint(self.suite, unit.run, unit.step, self.cache_dir)
        return present

    def load(self, unit: Unit) -> Any:
        from seedscope.models.checkpoints import load_checkpoint

        model, _ = load_checkpoint(
            self.suite, unit.run, unit.step, self.cache_dir, with_tokenizer=False
        )
        return model

    def evict(self, unit: Unit) -> int:
        from seedscope.models.checkpoints import evict_checkpoint

        return evict_checkpoint(self.suite, unit.run, unit.step, self.cache_dir)

    def nbytes(self, unit: Unit) -> int:
        from seedscope.models.checkpoints import checkpoint_bytes, fetch_checkpoint

        return checkpoint_bytes(fetch_checkpoint(self.suite, unit.run, unit.step, self.cache_dir))

    def commit(self, unit: Unit) -> str | None:
        """The commit the unit's revision resolves to in the cache (which weights it names),
        or None when the revision is not cached (an evicted hub checkpoint: published
        revisions do not move, so the unit's earlier result stands)."""
        return self.commits([unit])[unit.key]

    def commits(self, units: Sequence[Unit]) -> dict[str, str | None]:
        """`commit` of many units, reading each repo's refs once."""
        from seedscope.models.checkpoints import cache_dir_for, default_hub_cache
        from seedscope.models.hubcache import cached_revisions

        cache = cache_dir_for(self.suite, self.cache_dir) or default_hub_cache()
        refs = {repo: cached_revisions(cache, repo) for repo in {u.repo_id for u in units}}
        return {u.key: refs[u.repo_id].get(u.revision) for u in units}


@dataclass(frozen=True)
class LoaderStore:
    """Models from a callable `loader(unit) -> model` (tests, benchmarks, custom sources)."""

    loader: Callable[[Unit], Any]
    evicts: bool = False

    def fetch(self, unit: Unit) -> bool:
        return True

    def load(self, unit: Unit) -> Any:
        return self.loader(unit)

    def evict(self, unit: Unit) -> int:
        return 0

    def nbytes(self, unit: Unit) -> int:
        return 0


@dataclass(frozen=True)
class RandomGPT2Loader:
    """Tiny random `GPT2LMHeadModel`s, a deterministic function of (run, step).

    Stands in for real checkpoints in tests and benchmarks; picklable, so it also travels
    to Dask workers. The weights are drawn inside `torch.random.fork_rng()`, so the
    caller's global RNG is untouched.
    """

    n_layer: int = 2
    n_embd: int = 32
    n_head: int = 2
    vocab_size: int = 101
    n_positions: int = 64
    base_seed: int = 0

    def __call__(self, unit: Unit) -> Any:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            vocab_size=self.vocab_size,
            n_positions=self.n_positions,
            bos_token_id=0,
            eos_token_id=0,
        )
        digest = hashlib.sha256(f"{self.base_seed}/{unit.run}/{unit.step}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:8], "little"))
            model = GPT2LMHeadModel(config)
        return model.eval()


# ----------------------------------------------------------------------------- one unit


def compute_unit(
    unit: Unit,
    windows: np.ndarray,
    out_dir: str,
    cfg: SweepConfig,
    store: Any,
    subset: np.ndarray | None,
    probes: Sequence[Any] = (),
) -> dict[str, Any]:
    """Load, evaluate and write one unit (atomically); return its manifest entry fields.

    Full units write `<run>/step-<N>.npy` `[n_windows, window]` (and the subset, if any;
    with `cfg.top_k`, also `<run>/topk/step-<N>.npy`); trajectory units evaluate only the
    windows holding subset tokens and write `<run>/traj/step-<N>.npy` `[n_subset]`. A
    `keep_grid` unit measures its probes only (its log-prob files are intact and stay).
    Runs on the driver or on a Dask worker.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    model = store.load(unit)
    kw = dict(
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        threads=cfg.threads or None,
        source=unit.label,
        logits_budget_mb=cfg.logits_budget_mb,
    )
    n_windows, window = windows.shape
    entry: dict[str, Any] = {}
    if not unit.keep_grid:
        entry = {"file": None, "sha256": None, "traj_file": None, "traj_sha256": None}
    tokens = 0
    if not unit.logprobs or unit.keep_grid:
        pass
    elif unit.full:
        rel = unit_relpath(unit.run, unit.step)
        top_rel = topk_relpath(unit.run, unit.step)
        entry["sha256"] = evaluate_to_file(
            model, windows, out / rel, **kw, top_k=cfg.top_k, topk_path=out / top_rel
        )
        entry["file"] = rel
        if cfg.top_k:
            entry.update(topk_file=top_rel, topk_sha256=file_sha256(out / top_rel), top_k=cfg.top_k)
        tokens = n_windows * window
        if subset is not None:
            grid = np.load(out / rel, mmap_mode="r").reshape(-1)
            traj = np.ascontiguousarray(grid[subset])
            del grid
    else:
        if subset is None:
            raise SeedscopeError(
                f"Unit {unit.label} keeps only the trajectory subset, but it is empty.",
                "set trajectory_tokens > 0 when steps include 'all'.",
            )
        rows = np.unique(subset // window)
        lp = token_logprobs(model, windows[rows], **kw)
        traj = lp.reshape(-1)[np.searchsorted(rows, subset // window) * window + subset % window]
        tokens = len(rows) * window
    if subset is not None and unit.logprobs and not unit.keep_grid:
        trel = unit_relpath(unit.run, unit.step, trajectory=True)
        write_npy(out / trel, traj.astype(np.float32))
        entry["traj_file"] = trel
        entry["traj_sha256"] = file_sha256(out / trel)
    entry["probes"] = {}
    if any(unit.step in probe.steps for probe in probes):
        model.to("cpu")  # probes run on the CPU (their code is tested there), after the grid
    for probe in probes:
        if unit.step not in probe.steps:
            continue
        files = {}
        for table, frame in probe.measure(model).items():
            prel = probe_relpath(unit.run, probe.name, table, unit.step)
            write_parquet(out / prel, frame)
            files[table] = [prel, file_sha256(out / prel)]
        entry["probes"][probe.name] = {"digest": probe.digest(), "files": files}
    del model
    seconds = time.perf_counter() - t0
    entry.update(tokens=int(tokens), seconds=float(seconds))
    return entry


# ----------------------------------------------------------------------------- driver


def _array_sha256(arr: np.ndarray) -> str:
    digest = hashlib.sha256(str(arr.shape).encode())
    for start in range(0, arr.shape[0], 4096):
        digest.update(np.ascontiguousarray(arr[start : start + 4096], dtype=np.int64).tobytes())
    return digest.hexdigest()


def _unit_done(
    out: Path,
    entry: dict[str, Any] | None,
    params_hash: str,
    commit: str | None = None,
    probes: dict[str, str] | None = None,
    kind: str | None = None,
    top_k: int = 0,
) -> bool:
    """A unit is done when the manifest lists it with this configuration and `kind` (a
    probe-only unit never stands in for a log-prob unit, nor a full for a trajectory one),
    a full unit keeps `top_k` guesses, its files match their sha256, (where the cache tells)
    it was computed from the same weights, and it holds every probe in `probes`
    (name -> digest) with that digest and intact files."""
    if not entry or entry.get("params_hash") != params_hash:
        return False
    if kind is not None and entry.get("kind", kind) != kind:
        return False
    if (kind or entry.get("kind")) == "full" and entry.get("top_k", 0) != top_k:
        return False
    held = entry.get("probes", {})
    for name, digest in (probes or {}).items():
        got = held.get(name)
        if not got or got.get("digest") != digest:
            return False
        for rel, sha in got["files"].values():
            if not (out / rel).is_file() or file_sha256(out / rel) != sha:
                return False
    if commit is not None and entry.get("commit") not in (None, commit):
        return False
    for fkey, hkey in GRID_FILES:
        rel = entry.get(fkey)
        if rel is None:
            continue
        path = out / rel
        if not path.is_file() or file_sha256(path) != entry.get(hkey):
            return False
    return True


def _entry_files(entry: dict[str, Any], probes: bool = True) -> list[str]:
    """Every file a manifest entry lists (grid, trajectory, top-k, and with `probes` the
    probe tables), relative paths."""
    files = [entry[k] for k, _ in GRID_FILES if entry.get(k)]
    if not probes:
        return files
    for probe in entry.get("probes", {}).values():
        files += [rel for rel, _ in probe["files"].values()]
    return files


@dataclass(frozen=True)
class _Digested:
    """A probe with its digest computed once (on the driver), as workers receive it."""

    probe: Any
    fixed_digest: str

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def steps(self) -> frozenset[int]:
        return self.probe.steps

    def digest(self) -> str:
        return self.fixed_digest

    def measure(self, model: Any) -> dict[str, pd.DataFrame]:
        return self.probe.measure(model)


def _clean_temp_files(out: Path) -> None:
    """Remove `.tmp-*` leftovers of a killed sweep (one sweep per folder at a time)."""
    for path in out.rglob(".tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _choose_subset(
    windows: np.ndarray, cfg: SweepConfig, trajectory_index: Any
) -> np.ndarray | None:
    n_windows, window = windows.shape
    if trajectory_index is not None:
        subset = np.asarray(trajectory_index, dtype=np.int64).reshape(-1)
        if subset.size and (subset.min() < 0 or subset.max() >= n_windows * window):
            raise SeedscopeError(
                f"trajectory_index holds indices outside the [0, {n_windows * window}) grid.",
                "pass flat indices w * window + t into the eval windows.",
            )
    elif cfg.trajectory_tokens > 0 and window > 1:
        subset = choose_trajectory_tokens(n_windows, window, cfg.trajectory_tokens, cfg.seed)
    else:
        return None
    return subset if subset.size else None


def run_sweep(
    suite: Suite,
    windows: Any,
    out_dir: str | os.PathLike[str] | None,
    cfg: SweepConfig,
    loader: Callable[[Unit], Any] | None = None,
    trajectory_index: Any = None,
    runs: Sequence[str] | str = "all",
    store: Any = None,
    cache_dir: str | None = None,
    progress: bool = True,
    restart: bool = False,
    prune: bool = False,
    probes: Sequence[Any] = (),
) -> pd.DataFrame:
    """Evaluate every (run, step) unit of `cfg.steps` on `windows` `[n_windows, window]`
    into `out_dir` (default `token_losses_dir()`); return one row per unit:
    run, step, kind (full/traj), status (computed/skipped), seconds, tokens, tokens_per_s.

    Models come from `store` (a `CheckpointStore`), else `loader(unit) -> model`, else
    `seedscope.models.checkpoints` (hub suites are evicted after use, within
    `cfg.cache_budget_gb`, and the next download overlaps the current evaluation).
    `trajectory_index` (flat indices) overrides the seeded trajectory subset. `probes`
    (`CheckpointProbe`s) are measured in the units at their steps (probe-only units where
    the log-prob steps do not reach), so a checkpoint is fetched once for everything.
    A folder made with other settings is refused, or emptied first with `restart=True`;
    `prune=True` deletes units outside this sweep's list, so the folder holds exactly what
    an uninterrupted sweep into an empty folder would (how stage `token_losses` keeps its
    persisted output honest). With `cfg.scheduler` set, units run as Dask tasks on that cluster (workers need
    `out_dir` on a shared filesystem); the manifest is written here only.
    """
    from seedscope.core.paths import token_losses_dir

    arr = as_windows(windows)
    out = Path(out_dir) if out_dir is not None else token_losses_dir()
    plan = _plan_units(suite, runs, cfg, probes)
    if store is None:
        store = LoaderStore(loader) if loader is not None else HubStore(suite, cache_dir)
    manifest = _open_folder(out)
    subset = _trajectory_subset(arr, cfg, trajectory_index, plan.units)
    ident, params_hash = _settings_identity(suite, arr, cfg, subset)
    manifest = _refuse_or_restart(out, manifest, params_hash, restart)
    if prune:
        _prune(out, manifest, {u.key for u in plan.units})
    _write_trajectory_file(out, subset)
    _stamp_manifest(manifest, ident, params_hash, subset)
    provenance = _provenance(cfg)
    commits = _unit_commits(store, plan.units)
    sweep = _Sweep(
        suite=suite,
        arr=arr,
        out=out,
        cfg=cfg,
        store=store,
        subset=subset,
        probes=plan.probes,
        params_hash=params_hash,
        provenance=provenance,
        commits=commits,
    )
    triage = _decide_stale(sweep, manifest, plan)
    _write_manifest_then_delete(out, manifest, triage.stale)
    _compute_missing(sweep, manifest, triage, len(plan.units), progress)
    return _result_frame(triage.rows, plan.units)


@dataclass(frozen=True)
class _Plan:
    """What a sweep asks for: its units, its probes (digested), each unit's probe digests."""

    units: list[Unit]
    probes: list[_Digested]
    wanted: dict[str, dict[str, str]]  # unit key -> probe name -> digest


@dataclass(frozen=True)
class _Sweep:
    """The fixed facts of one sweep: folder, windows, settings, store, and what units hold."""

    suite: Suite
    arr: np.ndarray
    out: Path
    cfg: SweepConfig
    store: Any
    subset: np.ndarray | None
    probes: list[_Digested]
    params_hash: str
    provenance: dict[str, Any]
    commits: dict[str, str | None]


@dataclass(frozen=True)
class _Triage:
    """Which units are skipped (their rows), redone (`todo`), and which files go."""

    rows: list[dict[str, Any]]  # one per unit; computed units append theirs as they land
    todo: list[Unit]
    kept: dict[str, dict[str, Any]]  # grid fields of units whose probes alone are redone
    stale: set[str]  # files of what is recomputed or no longer asked for


def _plan_units(
    suite: Suite, runs: Sequence[str] | str, cfg: SweepConfig, probes: Sequence[Any]
) -> _Plan:
    """The sweep's units (probe-only ones added), its probes hashed once, and their wants."""
    units = resolve_units(suite, runs, list(cfg.steps))
    _check_probe_steps(suite, probes)
    units = with_probe_units(units, probes, suite)
    digested = [_Digested(p, p.digest()) for p in probes]  # hashed once, here
    wanted = {
        unit.key: {p.name: p.digest() for p in digested if unit.step in p.steps} for unit in units
    }
    return _Plan(units=units, probes=digested, wanted=wanted)


def _check_probe_steps(suite: Suite, probes: Sequence[Any]) -> None:
    """Refuse a probe that asks for steps outside the suite's schedule."""
    for probe in probes:
        off = sorted(set(probe.steps) - set(suite.steps))
        if off:
            raise SeedscopeError(
                f"Probe {probe.name!r} asks for steps {off[:5]} that suite {suite.name!r} "
                "does not have.",
                "choose steps from the suite's schedule (`seedscope suites` lists it).",
            )


def _open_folder(out: Path) -> dict[str, Any]:
    """Make the folder, remove a killed sweep's temp files, and read its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(out)
    return read_manifest(out)


def _trajectory_subset(
    arr: np.ndarray, cfg: SweepConfig, trajectory_index: Any, units: Sequence[Unit]
) -> np.ndarray | None:
    """The trajectory token subset; refused when empty while trajectory units need it."""
    subset = _choose_subset(arr, cfg, trajectory_index)
    if subset is None and any(u.kind == "traj" for u in units):
        raise SeedscopeError(
            "steps include 'all' but the trajectory token subset is empty.",
            "set trajectory_tokens > 0 (or pass trajectory_index).",
        )
    return subset


def _settings_identity(
    suite: Suite, arr: np.ndarray, cfg: SweepConfig, subset: np.ndarray | None
) -> tuple[dict[str, Any], str]:
    """The settings that fix a folder's numbers, and their hash (the `params_hash`)."""
    ident = {
        "suite": suite.name,
        "n_windows": int(arr.shape[0]),
        "window": int(arr.shape[1]),
        "windows_sha256": _array_sha256(arr),
        "trajectory_sha256": _array_sha256(subset[:, None]) if subset is not None else None,
        **cfg.result_params(),
    }
    params_hash = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return ident, params_hash


def _refuse_or_restart(
    out: Path, manifest: dict[str, Any], params_hash: str, restart: bool
) -> dict[str, Any]:
    """`manifest`; for a folder made with other settings, an error, or with `restart` an
    emptied folder and a fresh manifest."""
    if manifest.get("units") and manifest.get("params_hash") != params_hash:
        if not restart:
            raise SeedscopeError(
                f"{out} already holds log-probs made with other settings "
                f"(suite, eval windows, trajectory subset or dtype differ).",
                "write to a new out_dir, or delete that folder to start over.",
            )
        import shutil

        shutil.rmtree(out)
        out.mkdir(parents=True)
        manifest = {"units": {}}
    return manifest


def _write_trajectory_file(out: Path, subset: np.ndarray | None) -> None:
    """Write the trajectory subset's indices unless the folder already holds the same."""
    traj_path = out / TRAJECTORY_TOKENS
    if subset is not None and not (
        traj_path.is_file() and np.array_equal(np.load(traj_path), subset)
    ):
        write_npy(traj_path, subset)


def _stamp_manifest(
    manifest: dict[str, Any], ident: dict[str, Any], params_hash: str, subset: np.ndarray | None
) -> None:
    """Set the manifest's format, settings and trajectory file (in memory, not written)."""
    manifest.update(
        format=FORMAT_VERSION,
        params_hash=params_hash,
        params=ident,
        trajectory_file=TRAJECTORY_TOKENS if subset is not None else None,
    )
    manifest.setdefault("units", {})


def _provenance(cfg: SweepConfig) -> dict[str, Any]:
    """What every computed unit records about how it was made (not in the params hash)."""
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "threads": cfg.threads,
    }


def _unit_commits(store: Any, units: Sequence[Unit]) -> dict[str, str | None]:
    """The weights' commit of every unit, as far as `store` tells (None where it cannot)."""
    if hasattr(store, "commits"):
        commits = store.commits(units)
    else:
        commit_of = getattr(store, "commit", lambda unit: None)
        commits = {unit.key: commit_of(unit) for unit in units}
    return commits


def _decide_stale(sweep: _Sweep, manifest: dict[str, Any], plan: _Plan) -> _Triage:
    """Skip units done as asked; unlist the rest from `manifest` (in memory), keeping listed
    the log-prob files of units whose probes alone are stale; collect the files to delete."""
    rows: list[dict[str, Any]] = []
    todo: list[Unit] = []
    kept: dict[str, dict[str, Any]] = {}  # grid fields of units whose probes alone are redone
    stale: set[str] = set()  # files of what is recomputed or no longer asked for
    for unit in plan.units:
        entry = manifest["units"].get(unit.key)
        done = (sweep.out, entry, sweep.params_hash, sweep.commits[unit.key])
        if _unit_done(*done, plan.wanted[unit.key], unit.kind, sweep.cfg.top_k):
            for name in sorted(set(entry.get("probes", {})) - set(plan.wanted[unit.key])):
                stale |= {rel for rel, _ in entry["probes"].pop(name)["files"].values()}
            rows.append(_row(unit, "skipped", 0.0, 0))
            continue
        old = manifest["units"].pop(unit.key, None) or {}
        stale |= set(_entry_files(old))
        if unit.logprobs and _unit_done(*done, {}, unit.kind, sweep.cfg.top_k):
            # only probes are stale: measure them, keep the log-prob files, which stay
            # listed (without probes) so a kill meanwhile loses none of them
            stale -= set(_entry_files(old, probes=False))
            grid_keys = [k for pair in GRID_FILES for k in pair] + ["top_k", "tokens"]
            kept[unit.key] = {k: old[k] for k in grid_keys if k in old}
            manifest["units"][unit.key] = {**old, "probes": {}}
            unit = replace(unit, keep_grid=True)
        todo.append(unit)
    return _Triage(rows=rows, todo=todo, kept=kept, stale=stale)


def _write_manifest_then_delete(out: Path, manifest: dict[str, Any], stale: set[str]) -> None:
    """Write the manifest, then delete the stale files (never the other way round)."""
    write_json(out / MANIFEST, manifest)  # first: the manifest never lists a deleted file
    for rel in sorted(stale):
        (out / rel).unlink(missing_ok=True)


def _compute_missing(
    sweep: _Sweep, manifest: dict[str, Any], triage: _Triage, n_units: int, progress: bool
) -> None:
    """Compute the units still to do (here or on Dask), listing each in the manifest (written
    at once) as it lands, with a progress bar."""
    from tqdm.auto import tqdm

    todo = triage.todo
    bar = tqdm(total=n_units, initial=n_units - len(todo), unit="unit", disable=not progress)
    started = time.perf_counter()
    tokens_done = 0

    def finish(unit: Unit, entry: dict[str, Any]) -> None:
        nonlocal tokens_done
        manifest["units"][unit.key] = _manifest_entry(sweep, unit, entry, triage.kept)
        write_json(sweep.out / MANIFEST, manifest)
        tokens_done += entry["tokens"]
        triage.rows.append(_row(unit, "computed", entry["seconds"], entry["tokens"]))
        rate = tokens_done / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} tok/s")
        bar.update(1)

    arr, out, cfg, store, subset = sweep.arr, sweep.out, sweep.cfg, sweep.store, sweep.subset
    try:
        if cfg.scheduler:
            _run_dask(todo, arr, out, cfg, store, subset, finish, sweep.probes)
        else:
            _run_local(todo, arr, out, cfg, store, subset, finish, sweep.probes)
    finally:
        bar.close()


def _manifest_entry(
    sweep: _Sweep, unit: Unit, entry: dict[str, Any], kept: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A computed unit's manifest entry: what it is, how it was made, its files."""
    return {
        "suite": sweep.suite.name,
        "run": unit.run,
        "repo_id": unit.repo_id,
        "step": unit.step,
        "revision": unit.revision,
        "kind": unit.kind,
        "params_hash": sweep.params_hash,
        "commit": sweep.commits[unit.key],
        "n_windows": int(sweep.arr.shape[0]),
        "window": int(sweep.arr.shape[1]),
        **sweep.provenance,
        # wall time stays out of the manifest (a pipeline output): same inputs, same bytes
        **{k: v for k, v in entry.items() if k != "seconds"},
        **kept.get(unit.key, {}),  # a unit that redid only its probes keeps its grid's
    }


def _result_frame(rows: list[dict[str, Any]], units: Sequence[Unit]) -> pd.DataFrame:
    """The rows as `run_sweep` returns them: one per unit, sorted by run and step."""
    frame = pd.DataFrame(rows, columns=list(_row(units[0], "", 0.0, 0)) if units else None)
    if not frame.empty:
        frame = frame.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    return frame


def _prune(out: Path, manifest: dict[str, Any], keep: set[str]) -> None:
    """Drop units outside `keep` from the manifest and delete their files (and any unit
    file the manifest does not list: a leftover of a killed sweep)."""
    units = manifest.setdefault("units", {})
    for key in sorted(set(units) - keep):
        units.pop(key)
    listed = {
        (out / entry[name]).resolve()
        for entry in units.values()
        for name, _ in GRID_FILES
        if entry.get(name)
    } | {
        (out / rel).resolve()
        for entry in units.values()
        for probe in entry.get("probes", {}).values()
        for rel, _ in probe["files"].values()
    }
    # the manifest first: a kill mid-way then leaves unlisted files (deleted next time),
    # never a manifest listing deleted ones
    write_json(out / MANIFEST, manifest)
    files = [p for sub in ("", "traj/", "topk/") for p in sorted(out.glob(f"*/{sub}step-*.npy"))]
    for path in files + sorted(out.glob("*/probes/*/*/step-*.parquet")):
        if path.resolve() not in listed:
            path.unlink()


def _row(unit: Unit, status: str, seconds: float, tokens: int) -> dict[str, Any]:
    return {
        "run": unit.run,
        "step": unit.step,
        "kind": unit.kind,
        "status": status,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


def _run_local(
    todo: list[Unit],
    arr: np.ndarray,
    out: Path,
    cfg: SweepConfig,
    store: Any,
    subset: np.ndarray | None,
    finish: Callable[[Unit, dict[str, Any]], None],
    probes: Sequence[Any] = (),
) -> None:
    """Sequential units in this process; for evicting (hub) stores the next unit's download
    runs in a thread while the current one is evaluated, when both fit the cache budget."""
    evicts = bool(getattr(store, "evicts", False))
    budget = cfg.cache_budget_gb * 1e9
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedscope-prefetch") as pool:
        pending: Future | None = pool.submit(store.fetch, todo[0]) if todo else None
        for i, unit in enumerate(todo):
            was_cached = pending.result() if pending is not None else store.fetch(unit)
            pending = None
            nxt = todo[i + 1] if i + 1 < len(todo) else None
            if nxt is not None:
                size = store.nbytes(unit) if evicts else 0
                if not evicts or 2 * size <= budget:  # assume the next is as big
                    pending = pool.submit(store.fetch, nxt)
            entry = compute_unit(unit, arr, str(out), cfg, store, subset, probes)
            if evicts and not was_cached:
                entry["evicted_bytes"] = int(store.evict(unit))
            finish(unit, entry)


def _no_scheduler(address: str, timeout: float, reason: str) -> SeedscopeError:
    return SeedscopeError(
        f"The Dask scheduler at {address!r} did not answer within {timeout:g} s ({reason}).",
        "start it (`dask scheduler`) or fix `scheduler` (use '' for the local executor).",
    )


def check_scheduler(address: str, timeout: float) -> None:
    """A cheap pre-flight: the scheduler's TCP port accepts a connection within `timeout` s
    (addresses without host:port, e.g. `inproc://`, are left to the client)."""
    from urllib.parse import urlparse

    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError as exc:
        raise SeedscopeError(
            f"The Dask scheduler address {address!r} is malformed ({exc}).",
            "use e.g. 'tcp://host:8786' (or '' for the local executor).",
        ) from None
    if not host or port is None:
        return
    problem = connect_problem(host, port, timeout)
    if problem:
        raise _no_scheduler(address, timeout, problem)


def _connect(address: str, timeout: float) -> Any:
    from dask.distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise _no_scheduler(address, timeout, type(exc).__name__) from None


def _run_dask(
    todo: list[Unit],
    arr: np.ndarray,
    out: Path,
    cfg: SweepConfig,
    store: Any,
    subset: np.ndarray | None,
    finish: Callable[[Unit, dict[str, Any]], None],
    probes: Sequence[Any] = (),
) -> None:
    """Units as Dask tasks; workers write unit files, results come back here for the
    manifest. Hub stores fetch, evaluate and evict on the worker."""
    from dask.distributed import as_completed

    client = _connect(cfg.scheduler, cfg.scheduler_timeout_s)
    try:
        if not todo:
            return
        arr_f = client.scatter(np.asarray(arr), broadcast=True)
        futures = {
            client.submit(
                _dask_unit,
                unit,
                arr_f,
                str(out),
                cfg,
                store,
                subset,
                probes,
                key=f"seedscope-unit-{unit.key}-{time.time_ns()}",
                pure=False,
            ): unit
            for unit in todo
        }
        for fut in as_completed(futures, loop=client.loop):
            finish(futures[fut], fut.result())
    finally:
        client.close()


def _dask_unit(
    unit: Unit,
    arr: np.ndarray,
    out_dir: str,
    cfg: SweepConfig,
    store: Any,
    subset: np.ndarray | None,
    probes: Sequence[Any] = (),
) -> dict[str, Any]:
    evicts = bool(getattr(store, "evicts", False))
    was_cached = store.fetch(unit)
    entry = compute_unit(unit, arr, out_dir, cfg, store, subset, probes)
    if evicts and not was_cached:
        entry["evicted_bytes"] = int(store.evict(unit))
    return entry


def units_frame(units: Iterable[Unit]) -> pd.DataFrame:
    """Units as a table (run, step, repo_id, revision, kind), e.g. to preview a sweep."""
    return pd.DataFrame(
        [{**asdict(u), "kind": u.kind} for u in units],
        columns=["run", "step", "repo_id", "revision", "full", "kind"],
    )
