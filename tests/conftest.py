"""Shared fixtures: fabricated hub caches and an isolated project root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedscope.pipeline.runner import RECORD_MODULES

sys.path.insert(0, str(Path(__file__).parent))

import hubfake  # noqa: E402

# Tests never reach the network, whatever the machine allows.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CRFM_RUNS = ["alias", "battlestar"]
CRFM_STEPS = [0, 10, 400000]


@pytest.fixture(scope="session")
def crfm_cache(tmp_path_factory) -> dict:
    """A hub cache holding 2 CRFM GPT-2 small runs at 3 checkpoints each."""
    from seedscope.suites.registry import get_suite

    root = tmp_path_factory.mktemp("crfm")
    cache = root / "hub"
    tok_files = hubfake.gpt2_tokenizer_files(root / "tok")
    suite = get_suite("stanford-crfm-gpt2-small")
    vocab = len(__import__("json").loads(tok_files["vocab.json"].read_text()))
    models = {}
    for i, name in enumerate(CRFM_RUNS):
        run = suite.run(name)
        for j, step in enumerate(CRFM_STEPS):
            model = hubfake.tiny_gpt2(seed=100 * i + j, vocab_size=vocab)
            hubfake.write_crfm_checkpoint(cache, run.repo_id, step, model, tok_files, root / "w")
            models[(name, step)] = model
    return {"cache": cache, "suite": suite, "models": models, "vocab": vocab, "root": root}


def modules_folder(root: Path) -> Path:
    """Where each stage's kernel of a scratch project records the package modules it loaded
    (`seedscope.pipeline.runner.record_modules`), beside the project."""
    return root.parent / f"{root.name}-modules"


def assert_loaded_modules_within_deps(root: Path, stages: set[str] | None = None) -> None:
    """Every package module a stage's kernel really loaded is among the stage's declared
    code deps (`seedscope.pipeline.codedeps`, which `dvc.yaml` lists): the static closure missed none
    on the paths this run took."""
    import json

    from seedscope.pipeline.codedeps import stage_modules
    from seedscope.pipeline.registry import STAGES

    recorded = {p.stem: json.loads(p.read_text()) for p in modules_folder(root).glob("*.json")}
    assert set(recorded) == (set(STAGES) if stages is None else stages)
    for stage, loaded in recorded.items():
        assert f"stages.{stage}" in loaded, stage  # the recorder ran after the stage's own cells
        extra = set(loaded) - set(stage_modules(stage))
        assert not extra, f"stage {stage} loaded {sorted(extra)}, outside its declared deps"


def run_pipeline(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`dvc repro` (or other dvc args) in a scratch project at `root`."""

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "SEEDSCOPE_ROOT": str(root),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        RECORD_MODULES: str(modules_folder(root)),
    }
    return subprocess.run(
        [str(bin_dir / "dvc"), *(args or ("repro",))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """The whole pipeline run once, on the smoke profile, in a scratch copy of the project."""
    from seedscope.pipeline.runner import scratch_copy

    root = scratch_copy(tmp_path_factory.mktemp("smoke"), profile="smoke")
    out = run_pipeline(root)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return root
