"""data.dvc: real text arrives through `dvc import-url`; the corpus reads it (source: text).

The hub is unreachable here, so a local folder stands in for the URL: the same DVC import
mechanism, the same corpus code path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from seedscope.data.corpus import CorpusConfig, build_corpus

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def test_data_dvc_is_a_frozen_import_into_data():
    spec = yaml.safe_load((ROOT / "data.dvc").read_text())
    assert spec["frozen"] is True
    assert spec["deps"][0]["path"].startswith("https://")
    assert spec["outs"][0]["path"].startswith("data/")
    # the default pipeline never depends on data/
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert not any(d.startswith("data") for s in stages.values() for d in s["deps"])


@pytest.mark.slow
def test_import_url_then_corpus_reads_real_text(tmp_path):
    source = tmp_path / "owt-standin"
    source.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "model", "reads", "real", "text", "from", "the", "web", "and", "seeds"]
    for i in range(4):
        sentences = [" ".join(rng.choice(words, size=12)).capitalize() + "." for _ in range(300)]
        (source / f"doc{i}.txt").write_text("\n".join(sentences))
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    out = subprocess.run(
        [DVC, "import-url", str(source), "data"], cwd=repo, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load((repo / "data.dvc").read_text())["frozen"] is True
    cfg = CorpusConfig(
        source="text",
        text_dir=str(repo / "data"),
        vocab_size=300,
        window=32,
        n_train_tokens=20_000,
        n_eval_tokens=2048,
    )
    stats = build_corpus(cfg, tmp_path / "corpus")
    tokens = np.load(tmp_path / "corpus" / "eval_tokens.npy")
    assert tokens.shape == (2048 // 32, 32)
    assert stats["train"]["n_tokens"] > 0
