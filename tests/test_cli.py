"""The command line: real output on a fabricated hub cache, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hubfake
import numpy as np
import pytest

CLI = [sys.executable, "-m", "seedscope.cli"]


def _run(args, cache, **env):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), **env}
    return subprocess.run(CLI + args, capture_output=True, text=True, env=full_env, timeout=120)


def test_suites_json_lists_crfm_runs(tmp_path):
    out = _run(["suites", "--format", "json"], tmp_path)
    assert out.returncode == 0, out.stderr
    suites = json.loads(out.stdout)
    small = suites["stanford-crfm-gpt2-small"]
    assert small["n_checkpoints"] == 609
    assert [r["seed"] for r in small["runs"]] == [21, 49, 81, 343, 777]
    assert small["runs"][0]["repo_id"] == "stanford-crfm/alias-gpt2-small-x21"


def test_checkpoints_json_gives_branch_revisions(tmp_path):
    out = _run(
        ["checkpoints", "stanford-crfm-gpt2-medium", "--run", "arwen", "--format", "json"], tmp_path
    )
    rows = json.loads(out.stdout)
    assert len(rows) == 609 and rows[-1] == {
        "run": "arwen",
        "repo_id": "stanford-crfm/arwen-gpt2-medium-x21",
        "step": 400000,
        "revision": "checkpoint-400000",
    }


def test_logprobs_json_matches_independent_forward(crfm_cache, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. alpha beta gamma")
    out = _run(
        [
            "logprobs",
            "--suite",
            "stanford-crfm-gpt2-small",
            "--run",
            "stanford-crfm/battlestar-gpt2-small-x49",
            "--step",
            "10",
            "--text-file",
            str(text),
            "--format",
            "json",
        ],
        crfm_cache["cache"],
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert (res["suite"], res["run"], res["step"], res["revision"]) == (
        "stanford-crfm-gpt2-small",
        "battlestar",
        10,
        "checkpoint-10",
    )
    assert res["logprobs"][0] is None and len(res["logprobs"]) == len(res["token_ids"])
    expected = hubfake.numpy_gpt2_logprobs(
        crfm_cache["models"][("battlestar", 10)], res["token_ids"]
    )
    np.testing.assert_allclose(res["logprobs"][1:], expected, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["checkpoints", "stanford-crfm-gpt2-smal"], "Did you mean 'stanford-crfm-gpt2-small'"),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias2",
                "--step",
                "10",
                "--text-file",
                "{text}",
            ],
            "Did you mean 'alias'",
        ),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias",
                "--step",
                "2050",
                "--text-file",
                "{text}",
            ],
            "nearest: 2000, 2100",
        ),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias",
                "--step",
                "2000",
                "--text-file",
                "{text}",
            ],
            "checkpoint-2000",
        ),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias",
                "--step",
                "10",
                "--text-file",
                "{empty}",
            ],
            "is empty",
        ),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias",
                "--step",
                "10",
                "--text-file",
                "{latin}",
            ],
            "is not UTF-8",
        ),
        (
            [
                "logprobs",
                "--suite",
                "stanford-crfm-gpt2-small",
                "--run",
                "alias",
                "--step",
                "10",
                "--text-file",
                "{missing}",
            ],
            "does not exist",
        ),
        (["stage", "loss_corelation"], "Did you mean 'loss_correlation'"),
    ],
)
def test_bad_input_is_one_line_exit_2(crfm_cache, tmp_path, args, needle):
    files = {
        "text": tmp_path / "t.txt",
        "empty": tmp_path / "e.txt",
        "latin": tmp_path / "l.txt",
        "missing": tmp_path / "nope.txt",
    }
    files["text"].write_text("hello there")
    files["empty"].write_text("  \n")
    files["latin"].write_bytes("caf\xe9 na\xefve".encode("latin-1"))
    args = [a.format(**files) for a in args]
    out = _run(args, crfm_cache["cache"])
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("seedscope: error:")]
    assert len(lines) == 1 and "Fix:" in lines[0]
