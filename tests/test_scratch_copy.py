"""`scratch_copy` copies the project's sources only, whatever state the checkout is in: a
checkout where the pipeline has run (outputs tracked, untracked and git-ignored) yields a copy
with none of them, and the copy's provenance names the commit it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from seedscope.core.provenance import SOURCE_RECORD
from seedscope.pipeline.runner import pipeline_outputs, scratch_copy, source_files

# What a finished `dvc repro` leaves in a checkout (one file under every kind of output).
RUN_OUTPUTS = {
    "dvc.lock": "schema: '2.0'\n",
    "results/manifest.json": "{}\n",
    "results/corpus/eval_tokens.npy": "x",
    "results/.gitignore": "/corpus\n",
    "figures/loss_pca/scree.png": "png",
    "reports/notebooks/3_loss_pca.html": "<html></html>",
    "metrics/loss_pca.json": '{"n": 1}\n',
    "metrics/details/loss_pca.json": "{}\n",
    "metrics/plots/train_loss/small-s1.json": "[]\n",
}


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_copy_of_a_checkout_that_ran_holds_no_outputs(tmp_path):
    # A checkout with history: the project's sources, committed.
    checkout = scratch_copy(tmp_path / "checkout")
    (checkout / SOURCE_RECORD).unlink()
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-qm", "sources")
    sources_commit = _git(checkout, "rev-parse", "HEAD")
    # ...where a run has finished: outputs on disk, some published (committed) ...
    for rel, text in RUN_OUTPUTS.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    _git(checkout, "add", "-f", "dvc.lock", "metrics/loss_pca.json")
    _git(checkout, "commit", "-qm", "published results")
    assert _git(checkout, "rev-parse", "HEAD") != sources_commit
    # ... plus work in progress: an untracked module (copied) and an untracked scrap (not).
    (checkout / "src/seedscope/new_analysis.py").write_text('"""A new analysis."""\n')
    (checkout / "scrap.txt").write_text("notes\n")

    copied = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from seedscope.pipeline.runner import scratch_copy; "
            "print(scratch_copy(sys.argv[1], 'smoke'))",
            str(tmp_path / "copy"),
        ],
        env={**os.environ, "SEEDSCOPE_ROOT": str(checkout)},
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr
    copy = tmp_path / "copy"
    files = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    files = {f for f in files if not f.startswith(".git/")}
    assert not files & set(RUN_OUTPUTS), files & set(RUN_OUTPUTS)
    assert not any(f.split("/")[0] in {"results", "figures", "reports", "metrics"} for f in files)
    assert "src/seedscope/new_analysis.py" in files
    assert "scrap.txt" not in files
    assert (copy / "params.yaml").read_text() == (checkout / "profiles/smoke.yaml").read_text()
    # the copy has no history of its own; its provenance names the commit its sources came
    # from: the last one that changed them (publishing results does not), without "+dirty"
    # (untracked work-in-progress files do not count as changes to committed sources)
    assert json.loads((copy / SOURCE_RECORD).read_text())["git_commit"] == sources_commit
    commit = subprocess.run(
        [
            sys.executable,
            "-c",
            "from seedscope.core.provenance import git_commit; print(git_commit())",
        ],
        env={**os.environ, "SEEDSCOPE_ROOT": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert commit == sources_commit


def test_source_files_of_this_checkout_exclude_outputs():
    root = Path(__file__).resolve().parents[1]
    outputs = pipeline_outputs(root)
    for rel in source_files(root):
        assert not any(rel == o or rel.startswith(o + "/") for o in outputs), rel
        assert not rel.startswith(("results/", "figures/", "reports/")), rel


def test_provenance_commit_follows_sources_not_results(tmp_path):
    checkout = scratch_copy(tmp_path / "checkout")
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-qm", "sources")
    sources_commit = _git(checkout, "rev-parse", "HEAD")

    def commit_of_checkout() -> str:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from seedscope.core.provenance import git_commit; print(git_commit())",
            ],
            env={**os.environ, "SEEDSCOPE_ROOT": str(checkout)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    (checkout / "metrics").mkdir(exist_ok=True)
    (checkout / "metrics/loss_pca.json").write_text('{"n": 1}\n')
    (checkout / "tests/test_extra.py").write_text('"""More tests."""\n')
    _git(checkout, "add", "-f", "metrics/loss_pca.json", "tests/test_extra.py")
    _git(checkout, "commit", "-qm", "published results and a test")
    assert commit_of_checkout() == sources_commit
    with (checkout / "src/seedscope/analyses/pca.py").open("a") as f:
        f.write("\n# an edit\n")
    assert commit_of_checkout() == sources_commit + "+dirty"
    _git(checkout, "commit", "-qam", "an analysis change")
    assert commit_of_checkout() == _git(checkout, "rev-parse", "HEAD")
