"""Stage 0b · the eval corpus: build (or read) the eval windows and their per-token
metadata; summarise the planted tags. Science: `seedscope.data.corpus`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import params_hash
from seedscope.core.provenance import provenance
from seedscope.stages.common import StageResult, load_eval_data, stage_config


@dataclass(frozen=True, kw_only=True)
class CorpusResult(StageResult):
    """Stage 0b: what was built (token counts per split) and the eval tokens' metadata."""

    config: Any
    stats: dict[str, Any]  # per split (train, eval): token counts and the corpus facts
    meta: pd.DataFrame  # per eval token: window, position, tag, language, token class...


def corpus_stage(corpus: dict[str, Any]) -> CorpusResult:
    """Stage `corpus`: build the eval (and, for the mini-suite, train) tokens and metadata."""
    from seedscope.core.metrics import headline, write_metrics
    from seedscope.core.paths import corpus_dir
    from seedscope.data.corpus import build_corpus

    cfg = stage_config("corpus", corpus)
    stats = build_corpus(cfg, corpus_dir())
    _, meta = load_eval_data()
    heads = {
        "n_train_tokens": headline(stats["train"]["n_tokens"], "train tokens"),
        "n_eval_tokens": headline(len(meta), "eval tokens (windows x window length)"),
    }
    metrics = write_metrics(
        "corpus",
        heads,
        details={"stats": stats},
        provenance=provenance(stage="corpus", params_hash=params_hash(cfg)),
    )
    return CorpusResult(config=cfg, stats=stats, meta=meta, metrics=metrics)


def tag_summary(meta: pd.DataFrame) -> pd.DataFrame:
    """Eval tokens per phenomenon tag and language, with their share."""
    keys = [c for c in ("tag", "language") if c in meta.columns]
    table = meta.groupby(keys, dropna=False).size().rename("tokens").reset_index()
    table["share"] = table["tokens"] / table["tokens"].sum()
    return table.sort_values("tokens", ascending=False, ignore_index=True)


def sample_window_text(meta: pd.DataFrame, window: int = 0, width: int = 128) -> pd.DataFrame:
    """One eval window as a table of tokens with their tags (to eyeball the planted data)."""
    cols = [
        c
        for c in (
            "pos",
            "token",
            "token_class",
            "tag",
            "role",
            "language",
            "bracket_depth",
            "seen_before",
            "second_copy",
        )
        if c in meta.columns
    ]
    return meta.loc[meta["window"] == window, cols].head(width).reset_index(drop=True)
