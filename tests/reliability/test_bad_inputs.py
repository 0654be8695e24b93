"""Bad inputs: every user mistake is one line naming the problem and the fix, exit 2, no
traceback, raised before any heavy work, and nothing already computed is touched.

Each case runs a real entry point (`seedscope stage NAME --params FILE`, `seedscope
logprobs ...`, `seedscope validate --params FILE`) in a subprocess, in its own copy of a
scratch project (`seedscope.pipeline.runner.scratch_copy`) that holds fabricated results, against
a fabricated hub cache (`HF_HUB_OFFLINE=1`) and user suites on `$SEEDSCOPE_SUITES`. The
subprocess arms tripwires on the heavy work (papermill notebook execution, a model's
`from_pretrained`, training, a sweep unit): touching one exits with status 97. Every file
under the project's results/, metrics/, figures/ and reports/ (and the hub cache) is hashed
before and after. The table of cases is printed at the end of the module (`pytest -s`) and
written to `<pytest basetemp>/reliability/bad_inputs.md`.

Not-writable outputs: tests run as root, for whom mode bits do not stop writes, so the case
puts a regular file where the stage's output folder goes (`results/token_losses`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hubfake
import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
SMOKE = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
STEPS = [0, 10, 20]
WINDOW = 16

# Runs the CLI with tripwires on heavy work; modules are patched as they are imported, so a
# case that never needs torch never pays for importing it.
DRIVER = r"""
import importlib.abc, importlib.util, os, sys

def tripwire(what):
    def fire(*args, **kwargs):
        sys.stderr.write(f"HEAVY WORK STARTED: {what}\n")
        sys.stderr.flush()
        os._exit(97)
    return fire

def _papermill(m): m.execute_notebook = tripwire("notebook execution")
def _auto(m): m.AutoModelForCausalLM.from_pretrained = tripwire("model load")
def _train(m): m.train_run = tripwire("training"); m.train_suite = tripwire("training")
def _sweep(m): m.compute_unit = tripwire("sweep unit")
PATCH = {"papermill": _papermill, "transformers.models.auto.modeling_auto": _auto,
         "seedscope.models.train": _train, "seedscope.logprobs.sweep": _sweep}

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCH:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module
        def exec_module(module, run=run, patch=PATCH[name]):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
from seedscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- fixtures


def _suite_yaml(name: str, runs: list[tuple[str, str]]) -> str:
    spec = {
        "name": name,
        "description": "reliability test suite (fabricated cache)",
        "architecture": "gpt2",
        "revision_format": "checkpoint-{step}",
        "tokenizer": "rel",
        "schedule": {"explicit": STEPS},
        "runs": [
            {"name": n, "repo_id": repo, "seed": i + 1, "size": "small"}
            for i, (n, repo) in enumerate(runs)
        ],
    }
    return yaml.safe_dump(spec)


def _bin_bytes(model: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A scratch project with fabricated results, a hub cache and user suites."""
    from seedscope.models.hubcache import write_snapshot
    from seedscope.pipeline.runner import scratch_copy

    base = tmp_path_factory.mktemp("bad-inputs")
    project = scratch_copy(base / "project", profile="smoke")
    # fabricated "existing results" a mistake must not touch
    rng = np.random.default_rng(0)
    (project / "results" / "corpus" / "tokenizer").mkdir(parents=True, exist_ok=True)
    np.save(project / "results/corpus/eval_tokens.npy", rng.integers(1, 300, (6, WINDOW)))
    (project / "results/corpus/tokenizer/vocab.json").write_text("{}")
    (project / "results/manifest.json").write_text('{"suite": "fabricated"}\n')
    (project / "results/hub").mkdir()
    (project / "results/hub/README").write_text("an empty mini-suite cache\n")
    (project / "results/token_losses/mini-smoke").mkdir(parents=True, exist_ok=True)
    (project / "results/token_losses/mini-smoke/manifest.json").write_text('{"units": {}}\n')
    (project / "metrics/details").mkdir(parents=True, exist_ok=True)
    (project / "metrics/token_losses.json").write_text('{"n_units": 1}\n')
    (project / "figures/loss_correlation").mkdir(parents=True, exist_ok=True)
    (project / "figures/loss_correlation/key.png").write_bytes(rng.bytes(256))
    (project / "reports/notebooks").mkdir(parents=True, exist_ok=True)
    (project / "reports/notebooks/0d_token_losses.ipynb").write_text("{}")

    cache = base / "hub"
    tok = hubfake.gpt2_tokenizer_files(base / "tok", vocab_size=320)
    other_tok = hubfake.gpt2_tokenizer_files(base / "tok2", vocab_size=300)
    work = base / "w"
    for i, repo in enumerate(["rel/tiny-a", "rel/tiny-b"]):
        model = hubfake.tiny_gpt2(seed=i, vocab_size=320)
        for step in STEPS:
            hubfake.write_crfm_checkpoint(cache, repo, step, model, tok, work)
    model = hubfake.tiny_gpt2(seed=7, vocab_size=300)
    for step in STEPS:
        hubfake.write_crfm_checkpoint(cache, "rel/other-c", step, model, other_tok, work)
    good = hubfake.tiny_gpt2(seed=3, vocab_size=320)
    config = good.config.to_json_string().encode()
    weights = _bin_bytes(good)
    small = hubfake.tiny_gpt2(seed=4, vocab_size=200)
    broken = {
        "rel/trunc": {"config.json": config, "pytorch_model.bin": weights[: len(weights) // 2]},
        "rel/badcfg": {"config.json": b'{"model_type": "gpt2", ', "pytorch_model.bin": weights},
        "rel/tokmis": {
            "config.json": small.config.to_json_string().encode(),
            "pytorch_model.bin": _bin_bytes(small),
        },
    }
    for repo, files in broken.items():
        for step in STEPS:
            write_snapshot(cache, repo, f"checkpoint-{step}", {**files, **tok})

    suites = base / "suites"
    suites.mkdir()
    for name, runs in {
        "rel-tiny": [("a", "rel/tiny-a"), ("b", "rel/tiny-b")],
        "rel-mixed": [("a", "rel/tiny-a"), ("c", "rel/other-c")],
        "rel-ghost": [("a", "rel/ghost-a"), ("b", "rel/ghost-b")],
        "rel-broken": [("trunc", "rel/trunc"), ("badcfg", "rel/badcfg"), ("tokmis", "rel/tokmis")],
    }.items():
        (suites / f"{name}.yaml").write_text(_suite_yaml(name, runs))

    texts = base / "texts"
    for name, files in {
        "good": {"a.txt": "The quick brown fox jumps over the lazy dog. " * 40},
        "empty": {"a.txt": "The quick brown fox jumps over the lazy dog. " * 40, "b.txt": " \n"},
        "latin": {"a.txt": "caf\xe9 na\xefve r\xe9sum\xe9 " * 40},
        "tiny": {"a.txt": "hello world " * 5},
    }.items():
        (texts / name).mkdir(parents=True)
        for fname, text in files.items():
            data = text.encode("latin-1") if name == "latin" else text.encode()
            (texts / name / fname).write_bytes(data)
    (base / "hello.txt").write_text("The quick brown fox jumps over the lazy dog.")
    table: list[dict[str, Any]] = []
    yield {"base": base, "project": project, "cache": cache, "suites": suites, "texts": texts,
           "table": table}  # fmt: skip
    _write_table(base, table)


def _write_table(base: Path, table: list[dict[str, Any]]) -> None:
    if not table:
        return
    clear = sum(r["clear"] for r in table)
    lines = [
        f"bad inputs tried / clear errors: {len(table)} / {clear}",
        "",
        "| case | entry point | exit | s | clear | error line |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['case']} | {r['entry']} | {r['rc']} | {r['seconds']:.1f} | "
            f"{'yes' if r['clear'] else 'NO'} | {r['line'][:160]} |"
        )
    text = "\n".join(lines) + "\n"
    out = base.parent / "reliability"
    out.mkdir(exist_ok=True)
    (out / "bad_inputs.md").write_text(text)
    print("\n" + text)


# ----------------------------------------------------------------------------- cases


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


HUB = {"suite": {"name": "rel-tiny"}, "token_losses": {"steps": ["final", "mid"], "threads": 1}}


@dataclass
class Case:
    """A user mistake: argv (with {params}, {text}, {texts}, {port} placeholders), params
    (merged into the smoke profile) or raw params text, a mutation of the project, and a
    substring the one-line error must hold."""

    argv: list[str]
    needle: str
    params: dict[str, Any] = field(default_factory=dict)
    params_text: str | None = None
    mutate: Any = None
    env: dict[str, str] = field(default_factory=dict)
    max_seconds: float | None = None


def _eval_tokens(high: int, window: int = WINDOW):
    def mutate(project: Path) -> None:
        arr = np.random.default_rng(1).integers(1, 300, (6, window))
        arr[2, 5] = high
        np.save(project / "results/corpus/eval_tokens.npy", arr)

    return mutate


def _file_in_the_way(project: Path) -> None:
    shutil.rmtree(project / "results/token_losses")
    (project / "results/token_losses").write_text("a file where the output folder goes\n")


def _no_token_losses(project: Path) -> None:
    shutil.rmtree(project / "results/token_losses")


def _corpus(text_dir: str, **extra: Any) -> dict[str, Any]:
    return {
        "corpus": {
            "source": "text",
            "text_dir": "{texts}/" + text_dir,
            "vocab_size": 300,
            "window": WINDOW,
            "n_eval_tokens": 64,
            "n_train_tokens": 6000,
            **extra,
        }
    }


STAGE = ["stage"]
TL = [*STAGE, "token_losses", "--params", "{params}"]


def _logprobs(run: str, suite: str = "rel-broken") -> list[str]:
    return ["logprobs", "--suite", suite, "--run", run, "--step", "20", "--text-file", "{text}"]


CASES: dict[str, Case] = {
    "unknown suite": Case(
        ["stage", "suites", "--params", "{params}"],
        "Did you mean 'mini-smoke'",
        {"suite": {"name": "mini-smok"}},
    ),
    "unknown run": Case(
        TL, "Unknown run 'smal-x49'", {"suite": {"runs": ["small-x21", "smal-x49"]}}
    ),
    "step not on the schedule": Case(
        ["stage", "loss_correlation", "--params", "{params}"],
        "Step 55 is not on the checkpoint schedule",
        {"suite": {"final_step": 55}},
    ),
    "mid step after the final step": Case(
        ["stage", "suites", "--params", "{params}"],
        "is not before suite.final_step",
        {"suite": {"mid_step": 60, "final_step": 30}},
    ),
    "typo'd params key": Case(TL, "token_losses.batch_sise", {"token_losses": {"batch_sise": 64}}),
    "wrong type": Case(TL, "must be int, got '64'", {"token_losses": {"batch_size": "64"}}),
    "zero batch size": Case(TL, "batch_size=0", {"token_losses": {"batch_size": 0}}),
    "negative batch size": Case(
        ["stage", "behaviours", "--params", "{params}"],
        "behaviours.batch_size must be positive",
        {"behaviours": {"batch_size": -8}},
    ),
    "unknown device": Case(TL, "device='gpu'", {"token_losses": {"device": "gpu"}}),
    "typo'd params section": Case(
        ["validate", "--params", "{params}"],
        "Did you mean 'loss_correlation'",
        params_text="suite: {name: mini-smoke}\nloss_corelation: {n_boot: 10}\n",
    ),
    "params file is not YAML": Case(
        ["validate", "--params", "{params}"], "is not valid YAML", params_text="suite: [mini\n"
    ),
    "params file missing": Case(["validate", "--params", "{base}/nope.yaml"], "does not exist"),
    "unknown stage": Case(["stage", "loss_corelation"], "Did you mean 'loss_correlation'"),
    "behaviour that does not exist": Case(
        ["stage", "behaviours", "--params", "{params}"],
        "unknown behaviour 'sarcasm'",
        {"behaviours": {"behaviours": ["induction", "sarcasm"]}},
    ),
    "behaviour threshold of the old (accuracy) kind": Case(
        ["validate", "--params", "{params}"],
        "Did you mean 'score_threshold'",
        {"behaviours": {"threshold": 0.8}},
    ),
    "chance-normalised threshold out of range": Case(
        ["validate", "--params", "{params}"],
        "behaviours.score_threshold must be in (0, 1)",
        {"behaviours": {"score_threshold": 1.0}},
    ),
    "ICL bands that overlap": Case(
        ["validate", "--params", "{params}"],
        "induction.icl_early [40, 500] must end before icl_late",
        {"induction": {"icl_early": [40, 500], "icl_late": [450, 550]}},
    ),
    "induction threshold out of range": Case(
        ["validate", "--params", "{params}"],
        "induction.formed_score must be in (0, 1]",
        {"induction": {"formed_score": 40}},
    ),
    "phase-change width rule out of range": Case(
        ["validate", "--params", "{params}"],
        "induction.phase_max_width_fraction must be in (0, 1]",
        {"induction": {"phase_max_width_fraction": 2}},
    ),
    "no checkpoints required on a plateau": Case(
        ["validate", "--params", "{params}"],
        "induction.phase_min_plateau_points must be positive",
        {"induction": {"phase_min_plateau_points": 0}},
    ),
    "no refits for the transition error": Case(
        ["validate", "--params", "{params}"],
        "trajectories.n_refits must be positive",
        {"trajectories": {"n_refits": 0}},
    ),
    "noise quantiles not increasing": Case(
        ["validate", "--params", "{params}"],
        "trajectories.noise_quantiles must be increasing values in (0, 1)",
        {"trajectories": {"noise_quantiles": [0.9, 0.5]}},
    ),
    "analysis step not on the schedule": Case(
        ["validate", "--params", "{params}"],
        "behaviours.steps: Step 25",
        {"behaviours": {"steps": [0, 25, "final"]}},
    ),
    "sweep step not on the schedule": Case(
        TL, "token_losses.steps: Step 7", {"token_losses": {"steps": ["final", 7]}}
    ),
    "cache budget smaller than one checkpoint": Case(
        TL, "smaller than one checkpoint", _merge(HUB, {"token_losses": {"cache_budget_gb": 1e-6}})
    ),
    "checkpoints not cached, hub offline (stage)": Case(
        TL, "HF_HUB_OFFLINE is set", _merge(HUB, {"suite": {"name": "rel-ghost"}})
    ),
    "checkpoint not cached, hub offline (logprobs)": Case(
        _logprobs("a", "rel-ghost"), "is neither in"
    ),
    "mini-suite not trained yet": Case(TL, "dvc repro train", {}),
    "truncated pytorch_model.bin": Case(_logprobs("trunc"), "is corrupt or truncated"),
    "config.json is not JSON": Case(_logprobs("badcfg"), "config.json is not valid JSON"),
    "tokenizer does not match the model's vocabulary": Case(
        _logprobs("tokmis"), "do not belong together"
    ),
    "eval tokens out of vocabulary": Case(
        TL, "token id 999, outside the vocabulary [0, 320)", HUB, mutate=_eval_tokens(999)
    ),
    "eval windows longer than the context": Case(
        TL, "more than the context (64)", HUB, mutate=_eval_tokens(5, window=128)
    ),
    "empty text file": Case(
        ["stage", "corpus", "--params", "{params}"], "b.txt' is empty", _corpus("empty")
    ),
    "non-UTF-8 text file": Case(
        ["stage", "corpus", "--params", "{params}"], "is not UTF-8", _corpus("latin")
    ),
    "corpus too small for the eval size": Case(
        ["stage", "corpus", "--params", "{params}"],
        "too little for 4096 eval tokens",
        _corpus("tiny", n_eval_tokens=4096, window=64),
    ),
    "tokenizer folder missing": Case(
        ["stage", "corpus", "--params", "{params}"],
        "tokenizer_dir",
        _corpus("good", tokenizer_dir="{base}/no-such-tokenizer"),
    ),
    "tokenizer folder holds no tokenizer files": Case(
        ["stage", "corpus", "--params", "{params}"],
        "holds neither tokenizer.json nor vocab.json + merges.txt",
        _corpus("good", tokenizer_dir="{texts}/good"),
    ),
    "text folder holds no .txt files": Case(
        ["stage", "corpus", "--params", "{params}"],
        "no *.txt files in text_dir",
        _corpus("../suites"),
    ),
    "Dask scheduler does not answer": Case(
        TL,
        "did not answer within 2 s",
        _merge(
            HUB,
            {"token_losses": {"scheduler": "tcp://127.0.0.1:{port}", "scheduler_timeout_s": 2}},
        ),
        max_seconds=20,
    ),
    "output folder not writable": Case(TL, "is a file, not a folder", HUB, mutate=_file_in_the_way),
    "runs of a suite with different tokenizers": Case(
        TL, "do not share one tokenizer", _merge(HUB, {"suite": {"name": "rel-mixed"}})
    ),
    "upstream output missing": Case(
        ["stage", "loss_correlation", "--params", "{params}"],
        "`dvc repro token_losses`",
        {},
        mutate=_no_token_losses,
    ),
}


def _hash_tree(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _fill(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in subs.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subs) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_before_heavy_work(world, tmp_path, name):
    case = CASES[name]
    project = tmp_path / "project"
    shutil.copytree(world["project"], project, symlinks=True)
    subs = {
        "base": str(world["base"]),
        "texts": str(world["texts"]),
        "text": str(world["base"] / "hello.txt"),
        "params": str(project / "bad-params.yaml"),
        "port": str(_free_port()),
    }
    if case.params_text is not None:
        (project / "bad-params.yaml").write_text(case.params_text)
    else:
        params = _fill(_merge(SMOKE, case.params), subs)
        (project / "bad-params.yaml").write_text(yaml.safe_dump(params))
    if case.mutate:
        case.mutate(project)
    watched = [project / d for d in ("results", "metrics", "figures", "reports")]
    before = _hash_tree(*watched, world["cache"])
    env = {
        **os.environ,
        "SEEDSCOPE_ROOT": str(project),
        "SEEDSCOPE_SUITES": str(world["suites"]),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(world["cache"]),
        "OMP_NUM_THREADS": "1",
        **case.env,
    }
    argv = _fill(case.argv, subs)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - start
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("seedscope: error:")]
    line = lines[0] if lines else (out.stderr.strip().splitlines() or [""])[-1]
    after = _hash_tree(*watched, world["cache"])
    checks = {
        "exit 2": out.returncode == 2,
        "one error line": len(lines) == 1,
        "names the fix": bool(lines) and " Fix: " in lines[0],
        "names the problem": case.needle in line,
        "no traceback": "Traceback" not in out.stderr,
        "no heavy work": "HEAVY WORK STARTED" not in out.stderr,
        "results untouched": before == after,
        "in time": case.max_seconds is None or seconds < case.max_seconds,
    }
    world["table"].append(
        {
            "case": name,
            "entry": " ".join(argv[:2]),
            "rc": out.returncode,
            "seconds": seconds,
            "clear": all(checks.values()),
            "line": line,
        }
    )
    failed = [k for k, ok in checks.items() if not ok]
    assert not failed, f"{failed}\nstdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-3000:]}"


def test_at_least_20_distinct_cases():
    assert len(CASES) >= 20
    assert len({tuple(map(str, (c.argv, c.params, c.params_text, c.mutate))) for c in CASES.values()}) == len(CASES)  # fmt: skip
