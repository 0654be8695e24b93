"""Kills: `kill -9` at seeded random moments of training and of the sweep, then a rerun.

For each of training (`seedscope.models.train.train_run`, one tiny run) and the checkpoint sweep
(`seedscope.logprobs.sweep.run_sweep` with tiny random models), an uninterrupted run gives the
reference hashes and duration D; then 12 attempts each start a fresh run, SIGKILL it at a
moment drawn uniformly from [0, 0.8 D] (seeded; at least 10 must land mid-run), and rerun it to completion. After the rerun:
every output file equals the reference byte for byte, no `.tmp-*` (or `.ckpt-*`) leftover
survives, and the work finished before the kill is not redone (checkpoints already cached
are not rewritten; units the manifest lists are skipped).

Runs start by `fork` from a helper process that has already imported torch and
transformers (and run no torch compute, so forking is safe), so an attempt costs its own
work, not an interpreter start-up. Files compared: training: every file of the hub cache and
the loss and probe logs (not the resume state `*.state.pt`, whose zip records embed the
temp file's name, nor `*.meta.json`, whose summary holds wall time and the resume step);
sweep: every `.npy` and the manifest's per-unit sha256s (the manifest also holds timings).
The table is printed at the end (`pytest -s`) and written to
`<pytest basetemp>/reliability/kills.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

N_KILLS = 12  # attempts per task; at least MIN_LANDED must kill a running job
MIN_LANDED = 10
TRAIN_STEPS = (0, 5, 10, 15, 20)

ZYGOTE = r"""
import json, os, sys, traceback
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: F401
import transformers.models.gpt2.modeling_gpt2  # noqa: F401
from transformers import PreTrainedTokenizerFast  # noqa: F401
import pandas, pyarrow.parquet, safetensors.torch, tqdm.auto  # noqa: F401
import seedscope.logprobs.engine, seedscope.logprobs.sweep, seedscope.models.train  # noqa: F401

def train(a):
    from seedscope.suites.registry import Run, Suite
    from seedscope.models.train import TrainConfig, train_run
    suite = Suite(name="tiny", description="", architecture="gpt2",
                  revision_format="checkpoint-{step}", tokenizer="local",
                  steps=tuple(a["steps"]), runs=())
    run = Run(name="small-x1", repo_id="test/tiny-small-x1", seed=1, size="small")
    cfg = TrainConfig.smoke(context=16, batch_size=4, eval_windows=4, probe_sequences=2)
    out = train_run(suite, run, a["corpus"], a["cache"], cfg, progress=False, log_dir=a["logs"])
    return {"resumed_from": out.get("resumed_from"), "skipped": out.get("skipped")}

def sweep(a):
    from seedscope.suites.registry import get_suite
    from seedscope.logprobs.sweep import RandomGPT2Loader, SweepConfig, run_sweep
    cfg = SweepConfig(steps=("final", "mid", "all"), batch_size=4, device="cpu", threads=1,
                      trajectory_tokens=40, seed=3)
    frame = run_sweep(get_suite("mini-smoke"), np.load(a["windows"]), a["out"], cfg,
                      loader=RandomGPT2Loader(vocab_size=101, n_positions=32),
                      runs=["small-x21", "small-x49"], progress=False)
    return {"skipped": int((frame.status == "skipped").sum()),
            "computed": int((frame.status == "computed").sum())}

proto = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    task = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)
        code = 0
        try:
            torch.set_num_threads(1)
            result = {"train": train, "sweep": sweep}[task["kind"]](task)
            with open(task["result"], "w") as f:
                json.dump(result, f)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    proto.write(json.dumps({"pid": pid}) + "\n"); proto.flush()
    _, status = os.waitpid(pid, 0)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    proto.write(json.dumps({"signal": sig, "code": code}) + "\n"); proto.flush()
"""


class Zygote:
    """A process that forks one task per request; `run(task, kill_after=s)` SIGKILLs it."""

    def __init__(self, tmp: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp / "zygote.log", "w"),  # noqa: SIM115
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        )

    def run(self, task: dict, kill_after: float | None = None) -> tuple[dict, float]:
        start = time.monotonic()
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if kill_after is not None:
            time.sleep(max(0.0, kill_after - (time.monotonic() - start)))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = json.loads(self.proc.stdout.readline())
        return status, time.monotonic() - start

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rows: list[dict] = []
    yield rows
    if rows:
        lines = ["| task | attempt | kill at s | killed | finished before | skipped | redone "
                 "| identical | leftovers |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            lines.append(
                f"| {r['task']} | {r['attempt']} | {r['kill_at']:.2f} | {r['killed']} | "
                f"{r['finished']} | {r['skipped']} | {r['redone']} | {r['identical']} | "
                f"{r['leftovers']} |"
            )
        survived = sum(r["killed"] and r["identical"] and not r["leftovers"] for r in rows)
        identical = sum(r["identical"] for r in rows)
        killed = sum(r["killed"] for r in rows)
        head = f"kills: {killed}; kills survived / identical results: {survived} / {identical}"
        text = head + "\n\n" + "\n".join(lines) + "\n"
        out = tmp_path_factory.getbasetemp() / "reliability"
        out.mkdir(exist_ok=True)
        (out / "kills.md").write_text(text)
        print("\n" + text)


def _hashes(root: Path, skip=lambda p: False) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not _is_leftover(p, root) and not skip(p)
    }


def _is_leftover(path: Path, root: Path) -> bool:
    return any(part.startswith((".tmp-", ".ckpt-")) for part in path.relative_to(root).parts)


def _leftovers(*roots: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for root in roots
        if root.exists()
        for p in root.rglob("*")
        if p.name.startswith((".tmp-", ".ckpt-"))
    )


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny corpus (as in tests/test_train.py): BPE tokenizer, train stream, eval windows."""
    import hubfake

    out = tmp_path_factory.mktemp("corpus")
    tok = hubfake.tiny_tokenizer(out / "tokenizer")
    rng = np.random.default_rng(0)
    span = rng.integers(1, len(tok), size=(300, 8))
    train = np.concatenate([np.tile(span, 2), np.full((300, 1), tok.eos_token_id)], axis=1)
    np.save(out / "train_tokens.npy", train.ravel().astype(np.uint16))
    evals = rng.integers(1, len(tok), size=(4, 16))
    evals[:, 0] = tok.eos_token_id
    np.save(out / "eval_tokens.npy", evals.astype(np.int32))
    return out


def _train_task(root: Path, corpus: Path) -> dict:
    return {
        "kind": "train",
        "steps": list(TRAIN_STEPS),
        "corpus": str(corpus),
        "cache": str(root / "hub"),
        "logs": str(root / "logs"),
        "result": str(root / "result.json"),
    }


def _train_outputs(root: Path) -> dict[str, str]:
    hub = {f"hub/{k}": v for k, v in _hashes(root / "hub").items()}
    logs = _hashes(root / "logs", skip=lambda p: p.name.endswith((".state.pt", ".meta.json")))
    return {**hub, **{f"logs/{k}": v for k, v in logs.items()}}


def _refs(root: Path) -> dict[str, tuple[int, int]]:
    """revision -> (inode, mtime_ns) of its ref file: a rewritten checkpoint changes both."""
    refs = root / "hub" / "models--test--tiny-small-x1" / "refs"
    if not refs.is_dir():
        return {}
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in refs.iterdir()
        if not p.name.startswith(".tmp-")
    }


def _clean_reference(zygote, task_for, outputs, tmp_path: Path) -> tuple[dict, float]:
    """Run the task twice uninterrupted; both must agree. Returns (outputs, shorter duration)."""
    status, duration = zygote.run(task_for(tmp_path / "ref"))
    assert status == {"signal": 0, "code": 0}
    expected = outputs(tmp_path / "ref")
    status, again = zygote.run(task_for(tmp_path / "ref2"))
    assert outputs(tmp_path / "ref2") == expected  # two clean runs agree
    return expected, min(duration, again)


def _kill_moments(seed: int, duration: float) -> list[float]:
    rng = np.random.default_rng(seed)
    # drawn inside the run (the last 20% may finish before the signal lands)
    return [float(rng.uniform(0.0, 0.8 * duration)) for _ in range(N_KILLS)]


def _kill_then_rerun(zygote, task: dict, kill_at: float, progress) -> tuple[bool, object, dict]:
    """kill -9 the task at `kill_at` s, read `progress()`, rerun it to the end.
    Returns (the kill landed mid-run, progress at the kill, the rerun's exit status)."""
    status, _ = zygote.run(task, kill_after=kill_at)
    finished = progress()
    status2, _ = zygote.run(task)
    return status["signal"] == signal.SIGKILL, finished, status2


def test_training_survives_kill_9_at_random_moments(zygote, corpus, tmp_path, report):
    expected, duration = _clean_reference(
        zygote, lambda root: _train_task(root, corpus), _train_outputs, tmp_path
    )
    assert sum(k.startswith("hub/") and "/refs/" in k for k in expected) == len(TRAIN_STEPS)
    problems, unclean, landed = [], [], 0
    for attempt, kill_at in enumerate(_kill_moments(20240611, duration)):
        root = tmp_path / f"kill{attempt}"
        killed, finished, status2 = _kill_then_rerun(
            zygote, _train_task(root, corpus), kill_at, lambda root=root: _refs(root)
        )
        landed += killed
        assert status2 == {"signal": 0, "code": 0}, root / "result.json"
        after = _refs(root)
        kept = sum(after.get(rev) == stamp for rev, stamp in finished.items())
        result = json.loads((root / "result.json").read_text())
        resumed = result["resumed_from"] or 0
        redone_steps = [s for s in TRAIN_STEPS if 0 < s <= max(map(_step, finished), default=0)]
        identical = _train_outputs(root) == expected
        leftovers = _leftovers(root / "hub", root / "logs")
        report.append(
            {
                "task": "train_run",
                "attempt": attempt,
                "kill_at": kill_at,
                "killed": killed,
                "finished": f"{len(finished)} ckpts",
                "skipped": f"{kept} ckpts, resumed at step {resumed}",
                "redone": len(finished) - kept,
                "identical": identical,
                "leftovers": ", ".join(leftovers),
            }
        )
        if not identical or kept != len(finished):
            problems.append((attempt, kill_at, identical, leftovers, kept, len(finished)))
        # training resumes from the last complete checkpoint state, not from step 0
        if finished and result["skipped"] is not True:
            assert resumed >= max(redone_steps, default=0), (attempt, resumed, finished)
        if leftovers:
            unclean.append((attempt, leftovers))
    assert not problems, problems
    assert landed >= MIN_LANDED, f"only {landed} kills landed mid-run"
    assert not unclean, f"train_run left temp files after a kill + rerun: {unclean}"


def _step(revision: str) -> int:
    return int(revision.rsplit("-", 1)[1])


# ----------------------------------------------------------------------------- sweep


def _sweep_task(root: Path, windows: Path) -> dict:
    return {
        "kind": "sweep",
        "windows": str(windows),
        "out": str(root / "out"),
        "result": str(root / "result.json"),
    }


def _sweep_outputs(out: Path) -> dict[str, str]:
    files = _hashes(out, skip=lambda p: p.suffix != ".npy")
    manifest = json.loads((out / "manifest.json").read_text())
    units = {
        key: (u["sha256"], u["traj_sha256"], u["file"], u["traj_file"])
        for key, u in sorted(manifest["units"].items())
    }
    return {**files, "manifest-units": json.dumps(units), "params": manifest["params_hash"]}


def _manifest_units(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["units"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_sweep_survives_kill_9_at_random_moments(zygote, tmp_path, report):
    windows = tmp_path / "windows.npy"
    np.save(windows, np.random.default_rng(0).integers(0, 101, size=(10, 32)))
    expected, duration = _clean_reference(
        zygote,
        lambda root: _sweep_task(root, windows),
        lambda root: _sweep_outputs(root / "out"),
        tmp_path,
    )
    n_units = _manifest_units(tmp_path / "ref" / "out")
    assert n_units == 18
    problems, landed = [], 0
    for attempt, kill_at in enumerate(_kill_moments(20240612, duration)):
        root = tmp_path / f"kill{attempt}"
        killed, finished, status2 = _kill_then_rerun(
            zygote,
            _sweep_task(root, windows),
            kill_at,
            lambda root=root: _manifest_units(root / "out"),
        )
        landed += killed
        assert status2 == {"signal": 0, "code": 0}
        result = json.loads((root / "result.json").read_text())
        identical = _sweep_outputs(root / "out") == expected
        leftovers = _leftovers(root / "out")
        report.append(
            {
                "task": "run_sweep",
                "attempt": attempt,
                "kill_at": kill_at,
                "killed": killed,
                "finished": f"{finished} units",
                "skipped": f"{result['skipped']} units",
                "redone": finished - result["skipped"],
                "identical": identical,
                "leftovers": ", ".join(leftovers),
            }
        )
        if (
            not identical
            or leftovers
            or result["skipped"] != finished
            or result["computed"] != n_units - finished
        ):
            problems.append((attempt, kill_at, identical, leftovers, finished, result))
    assert not problems, problems
    assert landed >= MIN_LANDED, f"only {landed} kills landed mid-run"
