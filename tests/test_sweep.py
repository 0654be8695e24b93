"""The checkpoint sweep: units, resume after kill -9, Dask vs local, prefetch and eviction."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seedscope.core.errors import SeedscopeError
from seedscope.logprobs.engine import (
    file_sha256,
    load_logprobs,
    load_topk,
    load_trajectories,
    token_logprobs,
)
from seedscope.logprobs.sweep import (
    LoaderStore,
    RandomGPT2Loader,
    SweepConfig,
    Unit,
    choose_trajectory_tokens,
    read_probe_tables,
    resolve_units,
    run_sweep,
)
from seedscope.suites.registry import get_suite

SUITE = get_suite("mini-smoke")  # steps 0, 5, 10, 15, 20, 30, 40, 50, 60
RUNS = ["small-x21", "small-x49"]
LOADER = RandomGPT2Loader(vocab_size=101, n_positions=32)
CFG = SweepConfig(
    steps=("final", "mid", "all"), batch_size=4, device="cpu", threads=1, trajectory_tokens=40,
    seed=3,
)  # fmt: skip


def _windows() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 101, size=(10, 32))


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): file_sha256(p)
        for p in sorted(out.rglob("*.npy"))
        if not p.name.startswith(".tmp-")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    frame = run_sweep(SUITE, _windows(), out, CFG, loader=LOADER, runs=RUNS, progress=False)
    return out, frame


# ----------------------------------------------------------------------------- config, units


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -4}, "batch_size"),
        ({"dtype": "float64"}, "dtype"),
        ({"device": "gpu"}, "device"),
        ({"steps": ["last"]}, "steps"),
        ({"steps": []}, "steps"),
        ({"threads": -1}, "threads"),
        ({"cache_budget_gb": 0}, "cache_budget_gb"),
        ({"trajectory_tokens": -5}, "trajectory_tokens"),
        ({"scheduler_timeout_s": 0}, "scheduler_timeout_s"),
    ],
)
def test_config_validation_names_key_and_fix(kwargs, key):
    with pytest.raises(SeedscopeError, match=f"{key}=.*Fix: ") as info:
        SweepConfig(**kwargs)
    assert key in str(info.value)


def test_config_coerces_steps_to_tuple_and_is_frozen():
    cfg = SweepConfig(steps=["final", 10])
    assert cfg.steps == ("final", 10)
    with pytest.raises(AttributeError):
        cfg.batch_size = 3  # type: ignore[misc]


def test_resolve_units():
    units = resolve_units(SUITE, ["small-x49"], ["final", "mid", 10, "10"])
    assert [(u.run, u.step, u.full) for u in units] == [
        ("small-x49", 10, True),
        ("small-x49", 30, True),
        ("small-x49", 60, True),
    ]
    assert units[0].revision == "checkpoint-10"
    assert units[0].repo_id == "seedscope/mini-smoke-small-x49"
    units = resolve_units(SUITE, "all", ["all", "final"])
    assert len(units) == len(SUITE.runs) * len(SUITE.steps)
    assert {u.step for u in units if u.full} == {60}
    assert [(u.run, u.step) for u in resolve_units(SUITE, "small-x21", "final")] == [
        ("small-x21", 60)
    ]
    with pytest.raises(SeedscopeError, match="not on the checkpoint schedule"):
        resolve_units(SUITE, "all", [7])
    with pytest.raises(SeedscopeError, match="Unknown run"):
        resolve_units(SUITE, ["small-x22"], ["final"])


def test_trajectory_subset():
    a = choose_trajectory_tokens(6, 5, 10, seed=1)
    assert len(a) == 10 and len(np.unique(a)) == 10 and np.all(np.diff(a) > 0)
    assert np.all(a % 5 != 0) and a.max() < 30  # never position 0; inside the grid
    np.testing.assert_array_equal(a, choose_trajectory_tokens(6, 5, 10, seed=1))
    assert not np.array_equal(a, choose_trajectory_tokens(6, 5, 10, seed=2))
    assert len(choose_trajectory_tokens(2, 3, 100, seed=0)) == 4  # all valid positions


# ----------------------------------------------------------------------------- results


def test_sweep_results_match_engine(reference):
    out, frame = reference
    windows = _windows()
    assert len(frame) == 18 and set(frame.status) == {"computed"}
    assert set(frame[frame.kind == "full"].step) == {30, 60}
    subset = np.load(out / "trajectory_tokens.npy")
    assert len(subset) == 40
    for run in RUNS:
        model = LOADER(Unit(run, 60, "", ""))
        direct = token_logprobs(model, windows, batch_size=4, device="cpu", threads=1)
        np.testing.assert_array_equal(load_logprobs(out, [run], 60)[run], direct)
        steps, traj = load_trajectories(out, run)
        np.testing.assert_array_equal(steps, SUITE.steps)
        assert traj.shape == (40, len(SUITE.steps))
        np.testing.assert_array_equal(traj[:, -1], direct.reshape(-1)[subset])
        # a trajectory-only unit evaluates just the windows it needs: same numbers
        model10 = LOADER(Unit(run, 10, "", ""))
        full10 = token_logprobs(model10, windows, batch_size=4, device="cpu", threads=1)
        np.testing.assert_allclose(traj[:, 2], full10.reshape(-1)[subset], atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    unit = manifest["units"]["small-x21/step-60"]
    assert unit["sha256"] == file_sha256(out / "small-x21" / "step-60.npy")
    assert unit["revision"] == "checkpoint-60" and unit["repo_id"].endswith("small-x21")
    assert unit["versions"]["torch"] and unit["n_windows"] == 10 and unit["window"] == 32
    assert manifest["units"]["small-x21/step-10"]["file"] is None


def test_rerun_skips_and_repairs(reference, tmp_path):
    out = tmp_path / "o"
    cfg = SweepConfig(steps=("final",), batch_size=4, device="cpu", threads=1)
    run_sweep(SUITE, _windows(), out, cfg, loader=LOADER, runs=RUNS, progress=False)
    before = _hashes(out)
    (out / "small-x49" / "step-60.npy").write_bytes(b"garbage")  # a damaged unit
    again = run_sweep(SUITE, _windows(), out, cfg, loader=LOADER, runs=RUNS, progress=False)
    assert dict(zip(again.run, again.status, strict=True)) == {
        "small-x21": "skipped",
        "small-x49": "computed",
    }
    assert _hashes(out) == before
    with pytest.raises(SeedscopeError, match="other settings"):
        run_sweep(SUITE, _windows()[:5], out, cfg, loader=LOADER, runs=RUNS, progress=False)
    assert _hashes(out) == before


CHILD = """
import sys, numpy as np
from seedscope.suites.registry import get_suite
from seedscope.logprobs.sweep import RandomGPT2Loader, SweepConfig, run_sweep
cfg = SweepConfig(steps=("final", "mid", "all"), batch_size=4, device="cpu", threads=1,
                  trajectory_tokens=40, seed=3)
run_sweep(get_suite("mini-smoke"), np.load(sys.argv[2]), sys.argv[1], cfg,
          loader=RandomGPT2Loader(vocab_size=101, n_positions=32),
          runs=["small-x21", "small-x49"], progress=False)
"""


def _units_in_manifest(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["units"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_kill_9_then_rerun_equals_uninterrupted(reference, tmp_path):
    ref_out, _ = reference
    rng = np.random.default_rng(20240611)
    wait_units, delay = int(rng.integers(1, 16)), float(rng.uniform(0.0, 0.08))
    np.save(tmp_path / "windows.npy", _windows())
    (tmp_path / "child.py").write_text(CHILD)
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(out), str(tmp_path / "windows.npy")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 45
        while _units_in_manifest(out) < wait_units and child.poll() is None:
            assert time.monotonic() < deadline, "child sweep made no progress"
            time.sleep(0.005)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # what a reader may see now: every unit file is complete; temp files are never units
    for path in out.rglob("*.npy"):
        if not path.name.startswith(".tmp-"):
            assert np.load(path).shape in {(10, 32), (40,), (10, 32, 5)}
    manifest = json.loads((out / "manifest.json").read_text())
    done = len(manifest["units"])
    assert done >= wait_units
    for unit in manifest["units"].values():
        for key in ("file", "traj_file", "topk_file"):
            if unit.get(key):
                assert file_sha256(out / unit[key]) == unit[key.replace("file", "sha256")]
    frame = run_sweep(SUITE, _windows(), out, CFG, loader=LOADER, runs=RUNS, progress=False)
    assert (frame.status == "skipped").sum() == done
    assert (frame.status == "computed").sum() == 18 - done
    assert _hashes(out) == _hashes(ref_out)
    assert not list(out.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- executors


def test_dask_executor_equals_local_bit_for_bit(reference, tmp_path):
    from dask.distributed import LocalCluster

    ref_out, _ = reference
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        cfg = SweepConfig(**{**CFG.__dict__, "scheduler": cluster.scheduler_address})
        frame = run_sweep(
            SUITE, _windows(), tmp_path, cfg, loader=LOADER, runs=RUNS, progress=False
        )
    assert (frame.status == "computed").sum() == 18
    assert _hashes(tmp_path) == _hashes(ref_out)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["units"]) == 18


def test_unreachable_scheduler_errors_within_bound(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    cfg = SweepConfig(steps=("final",), scheduler=address, scheduler_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(SeedscopeError, match=f"{address}.*did not answer within 1 s"):
        run_sweep(SUITE, _windows(), tmp_path, cfg, loader=LOADER, runs=RUNS, progress=False)
    assert time.monotonic() - start == pytest.approx(1.0, abs=4.0)


# ----------------------------------------------------------------------------- prefetch/evict


class FakeHub(LoaderStore):
    """An evicting store that logs fetch/load/evict and whether downloads overlap loads."""

    def __init__(self, nbytes: int):
        object.__setattr__(self, "loader", LOADER)
        object.__setattr__(self, "evicts", True)
        object.__setattr__(self, "log", [])
        object.__setattr__(self, "size", nbytes)
        object.__setattr__(self, "lock", threading.Lock())
        object.__setattr__(self, "fetched", {})

    def _note(self, *event):
        with self.lock:
            self.log.append(event)

    def fetch(self, unit):
        self.fetched.setdefault(unit.step, threading.Event()).set()
        self._note("fetch", unit.step)
        return False

    def load(self, unit):
        nxt = unit.step + 5 if unit.step < 20 else None
        if nxt is not None and self.size < 1e9:  # prefetch expected: wait for it
            seen = self.fetched.setdefault(nxt, threading.Event()).wait(timeout=10)
            self._note("next-fetched-before-load-returned", unit.step, seen)
        return super().load(unit)

    def evict(self, unit):
        self._note("evict", unit.step)
        return self.size

    def nbytes(self, unit):
        return self.size


@pytest.mark.parametrize("nbytes", [1_000, 8_000_000_000])
def test_prefetch_overlaps_and_budget_serialises(tmp_path, nbytes):
    store = FakeHub(nbytes)
    cfg = SweepConfig(steps=(0, 5, 10, 15, 20), cache_budget_gb=10, device="cpu", threads=1)
    frame = run_sweep(SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS[:1], progress=False)
    assert list(frame.status) == ["computed"] * 5
    assert [e[1] for e in store.log if e[0] == "evict"] == [0, 5, 10, 15, 20]
    if nbytes < 1e9:  # 2 checkpoints fit the budget: the next download overlaps evaluation
        overlaps = [e for e in store.log if e[0] == "next-fetched-before-load-returned"]
        assert [e[2] for e in overlaps] == [True] * 4
    else:  # they do not: the next fetch only starts after the current eviction
        order = [(e[0], e[1]) for e in store.log]
        for step in (5, 10, 15, 20):
            assert order.index(("evict", step - 5)) < order.index(("fetch", step))


def test_hub_store_through_checkpoints(tmp_path):
    """Default path: models come from a hub cache through seedscope.models.checkpoints."""
    from seedscope.models.hubcache import write_snapshot

    cache = tmp_path / "cache"
    for step in (50, 60):
        model = LOADER(Unit("small-x21", step, "", ""))
        model.save_pretrained(tmp_path / f"m{step}")
        files = {p.name: p for p in (tmp_path / f"m{step}").iterdir()}
        write_snapshot(cache, "seedscope/mini-smoke-small-x21", f"checkpoint-{step}", files)
    cfg = SweepConfig(steps=(50, "final"), device="cpu", threads=1, batch_size=4)
    out = tmp_path / "out"
    frame = run_sweep(SUITE, _windows(), out, cfg, runs=["small-x21"], cache_dir=str(cache), progress=False)  # fmt: skip
    assert list(frame.status) == ["computed", "computed"]
    direct = token_logprobs(LOADER(Unit("small-x21", 60, "", "")), _windows(), 4, "cpu", threads=1)
    np.testing.assert_allclose(
        load_logprobs(out, ["small-x21"], 60)["small-x21"], direct, atol=1e-6
    )


def test_restart_and_prune_leave_what_a_fresh_sweep_writes(reference, tmp_path):
    """The stage's persisted folder: other settings -> emptied and recomputed (not refused);
    units outside the sweep (steps dropped from params, a killed sweep's unlisted file)
    are deleted, so the folder equals a fresh sweep's."""
    out = tmp_path / "o"
    cfg = SweepConfig(steps=("final", "mid"), batch_size=4, device="cpu", threads=1)
    run_sweep(SUITE, _windows()[:5], out, cfg, loader=LOADER, runs=RUNS, progress=False)
    stray = out / "small-x21" / "step-15.npy"
    stray.write_bytes(b"left by a killed sweep")
    final_only = SweepConfig(steps=("final",), batch_size=4, device="cpu", threads=1)
    frame = run_sweep(
        SUITE, _windows(), out, final_only, loader=LOADER, runs=RUNS, progress=False,
        restart=True, prune=True,
    )  # fmt: skip
    assert list(frame.status) == ["computed", "computed"]  # other windows: recomputed
    fresh = tmp_path / "fresh"
    run_sweep(SUITE, _windows(), fresh, final_only, loader=LOADER, runs=RUNS, progress=False)
    assert _hashes(out) == _hashes(fresh)
    # steps dropped from the sweep: pruned from disk and manifest, the rest skipped
    run_sweep(SUITE, _windows(), out, cfg, loader=LOADER, runs=RUNS, progress=False)
    again = run_sweep(
        SUITE, _windows(), out, final_only, loader=LOADER, runs=RUNS, progress=False, prune=True
    )
    assert list(again.status) == ["skipped", "skipped"]
    assert _hashes(out) == _hashes(fresh)
    assert sorted(json.loads((out / "manifest.json").read_text())["units"]) == sorted(
        json.loads((fresh / "manifest.json").read_text())["units"]
    )


def test_unit_recomputed_when_its_checkpoint_commit_changes(tmp_path):
    """A persisted unit is trusted only for the weights it was computed from: a retrained
    checkpoint (same revision, new commit in the cache) is evaluated again."""
    from seedscope.models.hubcache import write_snapshot

    cache = tmp_path / "cache"
    repo = "seedscope/mini-smoke-small-x21"

    def save(step: int, seed: int) -> None:
        model = RandomGPT2Loader(vocab_size=101, n_positions=32, base_seed=seed)(
            Unit("small-x21", step, "", "")
        )
        folder = tmp_path / f"m{step}-{seed}"
        model.save_pretrained(folder)
        write_snapshot(cache, repo, f"checkpoint-{step}", {p.name: p for p in folder.iterdir()})

    save(60, seed=0)
    cfg = SweepConfig(steps=("final",), device="cpu", threads=1, batch_size=4)
    out = tmp_path / "out"
    kw = dict(runs=["small-x21"], cache_dir=str(cache), progress=False)
    first = run_sweep(SUITE, _windows(), out, cfg, **kw)
    assert list(first.status) == ["computed"]
    assert list(run_sweep(SUITE, _windows(), out, cfg, **kw).status) == ["skipped"]
    before = load_logprobs(out, ["small-x21"], 60)["small-x21"].copy()
    save(60, seed=1)  # the same revision now names other weights
    assert list(run_sweep(SUITE, _windows(), out, cfg, **kw).status) == ["computed"]
    after = load_logprobs(out, ["small-x21"], 60)["small-x21"]
    assert np.nanmax(np.abs(after - before)) > 1e-3


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ToyProbe:
    """A probe whose table is a fingerprint of the weights it saw."""

    steps: frozenset
    version: int = 1
    name: str = "toy"

    def digest(self) -> str:
        return f"toy-{self.version}"

    def measure(self, model) -> dict:
        total = sum(float(p.detach().double().sum()) for p in model.parameters())
        return {"weights": pd.DataFrame({"sum": [total], "version": [self.version]})}


class CountingStore(LoaderStore):
    def __init__(self, loader):
        super().__init__(loader)
        object.__setattr__(self, "calls", [])

    def load(self, unit):
        self.calls.append((unit.run, unit.step))
        return self.loader(unit)


def test_probes_are_measured_in_the_same_unit_one_load_per_checkpoint(tmp_path):
    cfg = SweepConfig(**{**CFG.__dict__, "steps": ("final",), "trajectory_tokens": 0})
    probe = ToyProbe(frozenset({5, 15, 60}))
    store = CountingStore(LOADER)
    frame = run_sweep(
        SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS, progress=False, probes=[probe]
    )
    # final (60) carries log-probs and the probe; 5 and 15 become probe-only units
    assert sorted(store.calls) == sorted((r, s) for r in RUNS for s in (5, 15, 60))
    kinds = frame.set_index(["run", "step"])["kind"]
    assert kinds[(RUNS[0], 60)] == "full" and kinds[(RUNS[0], 5)] == "probe"
    tables = read_probe_tables(tmp_path, "toy", "weights", RUNS, [5, 15, 60], "toy-1")
    for (run, step), table in tables.items():
        model = LOADER(Unit(run, step, "", ""))
        expect = sum(float(p.detach().double().sum()) for p in model.parameters())
        assert table["sum"].iloc[0] == pytest.approx(expect, rel=1e-12)
    assert tables[(RUNS[0], 5)]["sum"].iloc[0] != tables[(RUNS[0], 15)]["sum"].iloc[0]
    with pytest.raises(SeedscopeError, match="rerun stage `token_losses`"):
        read_probe_tables(tmp_path, "toy", "weights", RUNS, [5], "toy-2")
    with pytest.raises(SeedscopeError, match="no 'toy' table"):
        read_probe_tables(tmp_path, "toy", "weights", RUNS, [10], "toy-1")
    # rerun: nothing loaded again; a new probe version recomputes exactly its units
    store.calls.clear()
    again = run_sweep(
        SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS, progress=False, probes=[probe]
    )
    assert store.calls == [] and set(again.status) == {"skipped"}
    newer = ToyProbe(frozenset({5, 15, 60}), version=2)
    grid = tmp_path / RUNS[0] / "step-60.npy"
    before = (grid.stat().st_ino, grid.stat().st_mtime_ns, _hashes(tmp_path))
    run_sweep(
        SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS, progress=False, probes=[newer]
    )
    assert sorted(store.calls) == sorted((r, s) for r in RUNS for s in (5, 15, 60))
    # only the probe was stale: its tables are remeasured, the log-prob files stay untouched,
    # and the manifest is the one a fresh sweep with the new probe writes
    assert (grid.stat().st_ino, grid.stat().st_mtime_ns, _hashes(tmp_path)) == before
    fresh = tmp_path.parent / f"{tmp_path.name}-fresh"
    run_sweep(SUITE, _windows(), fresh, cfg, loader=LOADER, runs=RUNS, progress=False,
              probes=[newer])  # fmt: skip
    assert (
        json.loads((tmp_path / "manifest.json").read_text())["units"]
        == json.loads((fresh / "manifest.json").read_text())["units"]
    )
    assert (
        read_probe_tables(tmp_path, "toy", "weights", RUNS, [5], "toy-2")[(RUNS[0], 5)][
            "version"
        ].iloc[0]
        == 2
    )
    # a step that was probe-only becomes a log-prob step: recomputed, never taken as done
    grid_cfg = SweepConfig(**{**cfg.__dict__, "steps": ("final", 5)})
    store.calls.clear()
    frame = run_sweep(
        SUITE, _windows(), tmp_path, grid_cfg, store=store, runs=RUNS, progress=False,
        probes=[newer],
    )  # fmt: skip
    assert sorted(store.calls) == sorted((r, 5) for r in RUNS)
    assert load_logprobs(tmp_path, RUNS, 5)[RUNS[0]].shape == (10, 32)
    # a sweep without the probe prunes its probe-only units and its tables
    run_sweep(SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS, progress=False, prune=True)
    assert not list(tmp_path.rglob("*.parquet"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(u["step"] for u in manifest["units"].values()) == [60, 60]


def test_a_kill_while_only_probes_are_remeasured_keeps_the_log_prob_files(tmp_path):
    cfg = SweepConfig(**{**CFG.__dict__, "steps": ("final",), "trajectory_tokens": 0})
    run_sweep(SUITE, _windows(), tmp_path, cfg, loader=LOADER, runs=RUNS, progress=False,
              probes=[ToyProbe(frozenset({60}))])  # fmt: skip
    grids = sorted(tmp_path.rglob("step-60.npy"))  # grids and top-k files of both runs
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in grids}

    class Killed(Exception):
        pass

    class DiesOnLoad(LoaderStore):
        def load(self, unit):
            raise Killed  # as if the process died while the new probe was being measured

    newer = [ToyProbe(frozenset({60}), version=2)]
    with pytest.raises(Killed):
        run_sweep(SUITE, _windows(), tmp_path, cfg, store=DiesOnLoad(LOADER), runs=RUNS,
                  progress=False, probes=newer, prune=True)  # fmt: skip
    # the grids are still listed and intact; only the stale probe tables are gone
    assert load_logprobs(tmp_path, RUNS, 60)[RUNS[0]].shape == (10, 32)
    assert not list(tmp_path.rglob("*.parquet"))
    store = CountingStore(LOADER)
    run_sweep(SUITE, _windows(), tmp_path, cfg, store=store, runs=RUNS, progress=False,
              probes=newer, prune=True)  # fmt: skip
    assert sorted(store.calls) == [(r, 60) for r in RUNS]  # one load each, for the probe
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in grids} == stamps
    assert read_probe_tables(tmp_path, "toy", "weights", RUNS, [60], "toy-2")


def test_full_units_keep_top_k_guesses_and_a_new_k_recomputes_only_them(tmp_path):
    store = CountingStore(LOADER)
    run_sweep(SUITE, _windows(), tmp_path, CFG, store=store, runs=RUNS, progress=False)
    windows, lp = _windows(), load_logprobs(tmp_path, RUNS, 60)
    top = load_topk(tmp_path, RUNS[0], 60)
    assert top.shape == (10, 32, 5)
    # the guesses are the model's own: the target's stored log-prob is never above the
    # k-th guess unless the target is among the guesses, where the two agree (float16)
    hit = top["id"][:, 1:] == windows[:, 1:, None]
    found = hit.any(-1)
    got = top["logprob"][:, 1:][hit].astype(np.float32)
    np.testing.assert_allclose(got, lp[RUNS[0]][:, 1:][found], rtol=1e-3, atol=1e-4)
    assert (lp[RUNS[0]][:, 1:][~found] <= top["logprob"][:, 1:, -1][~found] + 4e-3).all()
    assert not (tmp_path / RUNS[0] / "topk" / "step-5.npy").exists()  # trajectory units: none
    # a new k recomputes the full units (final 60, mid 30) and nothing else
    store.calls.clear()
    three = SweepConfig(**{**CFG.__dict__, "top_k": 3})
    run_sweep(SUITE, _windows(), tmp_path, three, store=store, runs=RUNS, progress=False)
    assert sorted(store.calls) == sorted((r, s) for r in RUNS for s in (30, 60))
    assert load_topk(tmp_path, RUNS[0], 60).shape == (10, 32, 3)
    # none kept: the files go and the readers say which setting keeps them
    run_sweep(SUITE, _windows(), tmp_path, SweepConfig(**{**CFG.__dict__, "top_k": 0}),
              store=store, runs=RUNS, progress=False, prune=True)  # fmt: skip
    assert not list(tmp_path.rglob("topk/*.npy"))
    with pytest.raises(SeedscopeError, match="token_losses.top_k"):
        load_topk(tmp_path, RUNS[0], 60)


def test_a_probe_step_off_the_schedule_is_refused_before_any_work(tmp_path):
    store = CountingStore(LOADER)
    with pytest.raises(SeedscopeError, match=r"steps \[7\]"):
        run_sweep(
            SUITE, _windows(), tmp_path, CFG, store=store, runs=RUNS, progress=False,
            probes=[ToyProbe(frozenset({5, 7}))],
        )  # fmt: skip
    assert store.calls == []
