"""Train the mini-suite: GPT-2 runs that differ only in their seed, saved as a hub cache.

Each run trains a `GPT2LMHeadModel` on the project corpus and writes every checkpoint of
its suite's schedule as a revision (`checkpoint-N`) of a Hugging Face hub cache, so the
analyses read it through the same API as the CRFM and Pythia suites. Training is a pure
function of (config, corpus, seed): dropout is off, the batch of step `s` is a function of
(`data_seed`, `s`), the initialisation of `init_seed`; a run killed at any moment resumes
from its last checkpoint state (weights, optimizer, step, loss history) bit-identically.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seedscope.core.errors import SeedscopeError
from seedscope.core.io import atomic_path, read_json, write_json, write_parquet
from seedscope.models.hubcache import cached_revisions, repo_folder, repo_slug, write_snapshot
from seedscope.suites.registry import Run, Suite

# Summary fields that depend on the machine or on interruptions, not on the weights.
VOLATILE_SUMMARY_KEYS = ("tokens_per_s", "wall_s", "resumed_from", "skipped")

DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 2, "n_head": 4, "n_embd": 64},
    "medium": {"n_layer": 2, "n_head": 8, "n_embd": 128},
}
SMOKE_SIZES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 2, "n_head": 2, "n_embd": 16},
    "medium": {"n_layer": 2, "n_head": 2, "n_embd": 32},
}
_SIZE_KEYS = ("n_layer", "n_head", "n_embd")
_POSITION_INITS = ("sinusoidal", "default")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a mini-suite run besides its seed and the corpus.

    `init_seed` / `data_seed` = None use the run's seed (as CRFM and PolyPythia do: the seed
    sets both the initialisation and the data order); set one to decouple them.
    `workers` and `progress` change only how fast the suite trains, never its weights.
    """

    sizes: dict = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SIZES.items()})
    context: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    position_init: str = "default"
    position_init_scale: float = 0.1
    prev_token_heads: int = 0
    prev_token_gain: float = 6.0
    init_seed: int | None = None
    data_seed: int | None = None
    workers: int = 2
    threads_per_worker: int = 1
    bf16: bool = False
    eval_windows: int = 128  # eval windows scored at every checkpoint (diagnostic)
    probe_sequences: int = 32  # induction-probe sequences per checkpoint (diagnostic)
    probe_min_count: int = 5  # probe ids: seen >= this often in training (diagnostic)
    # Token-level copies written into training rows (`plant_copies`): the share of rows that
    # get [span, gap, span] at step 0, falling linearly to `copy_share_final` at step
    # `copy_anneal_steps` (0 = constant), spans of `copy_min_len..copy_max_len` ids.
    copy_share: float = 0.0
    copy_share_final: float = 0.0
    copy_anneal_steps: int = 0
    copy_min_len: int = 8
    copy_max_len: int = 20

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_numbers()
        self._check_copy_task()
        self._check_positions()
        self._check_seeds_and_precision()

    def _check_sizes(self) -> None:
        """Each size an architecture of positive integers, n_embd divisible by n_head."""
        if not isinstance(self.sizes, dict) or not self.sizes:
            raise SeedscopeError(
                "TrainConfig key `sizes` must be a non-empty dict size -> architecture.",
                'give e.g. {"small": {"n_layer": 2, "n_head": 4, "n_embd": 64}}.',
            )
        for size, spec in self.sizes.items():
            if not isinstance(spec, dict) or sorted(spec) != sorted(_SIZE_KEYS):
                raise SeedscopeError(
                    f"TrainConfig key `sizes.{size}` is {spec!r}.",
                    f"give exactly the keys {', '.join(_SIZE_KEYS)} as positive integers.",
                )
            if not all(isinstance(v, int) and v > 0 for v in spec.values()):
                raise SeedscopeError(
                    f"TrainConfig key `sizes.{size}` has a non-positive or non-integer value.",
                    "give positive integers for n_layer, n_head, n_embd.",
                )
            if spec["n_embd"] % spec["n_head"]:
                raise SeedscopeError(
                    f"TrainConfig key `sizes.{size}`: n_embd {spec['n_embd']} is not divisible "
                    f"by n_head {spec['n_head']}.",
                    "choose n_embd a multiple of n_head.",
                )

    def _check_numbers(self) -> None:
        """Counts are integers in range; rates and shares are numbers in range."""
        positive_ints = ("context", "batch_size", "workers", "threads_per_worker")
        for key in positive_ints + ("eval_windows", "probe_sequences", "probe_min_count", "warmup"):
            value = getattr(self, key)
            low = 1 if key in positive_ints else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SeedscopeError(
                    f"TrainConfig key `{key}` is {value!r}.",
                    f"give an integer >= {low}.",
                )
        if self.context < 8:
            raise SeedscopeError(
                f"TrainConfig key `context` is {self.context}.", "give a context of at least 8."
            )
        for key in ("lr", "grad_clip"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SeedscopeError(
                    f"TrainConfig key `{key}` is {getattr(self, key)!r}.", "give a number > 0."
                )
        for key in (
            "min_lr_ratio",
            "weight_decay",
            "beta1",
            "beta2",
            "copy_share",
            "copy_share_final",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise SeedscopeError(
                    f"TrainConfig key `{key}` is {value!r}.", "give a number in [0, 1]."
                )

    def _check_copy_task(self) -> None:
        """Copy spans (the induction curriculum) are integers that fit twice in a context."""
        lengths = (self.copy_min_len, self.copy_max_len, self.copy_anneal_steps)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in lengths):
            raise SeedscopeError(
                f"TrainConfig keys copy_min_len / copy_max_len / copy_anneal_steps are {lengths}.",
                "give integers >= 0.",
            )
        if max(self.copy_share, self.copy_share_final) > 0 and not (
            2 <= self.copy_min_len <= self.copy_max_len and 2 * self.copy_max_len <= self.context
        ):
            raise SeedscopeError(
                f"TrainConfig copy spans of {self.copy_min_len}-{self.copy_max_len} ids do not "
                f"fit twice in a context of {self.context}.",
                "give 2 <= copy_min_len <= copy_max_len <= context / 2.",
            )

    def _check_positions(self) -> None:
        """A known position init; previous-token heads need sinusoidal positions."""
        if self.position_init not in _POSITION_INITS:
            raise SeedscopeError(
                f"TrainConfig key `position_init` is {self.position_init!r}.",
                f"use one of: {', '.join(_POSITION_INITS)}.",
            )
        smallest_heads = min(spec["n_head"] for spec in self.sizes.values())
        if not isinstance(self.prev_token_heads, int) or not (
            0 <= self.prev_token_heads <= smallest_heads
        ):
            raise SeedscopeError(
                f"TrainConfig key `prev_token_heads` is {self.prev_token_heads!r}.",
                f"give an integer in [0, {smallest_heads}] (the smallest n_head).",
            )
        if self.prev_token_heads and self.position_init != "sinusoidal":
            raise SeedscopeError(
                "TrainConfig key `prev_token_heads` needs sinusoidal position embeddings.",
                'set position_init: "sinusoidal" or prev_token_heads: 0.',
            )

    def _check_seeds_and_precision(self) -> None:
        """Seeds are integers or None; bf16 is a bool."""
        for key in ("init_seed", "data_seed"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise SeedscopeError(
                    f"TrainConfig key `{key}` is {value!r}.",
                    "give an integer, or None to use the run's seed.",
                )
        if not isinstance(self.bf16, bool):
            raise SeedscopeError(f"TrainConfig key `bf16` is {self.bf16!r}.", "give true or false.")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> TrainConfig:
        """Build from a params dict (e.g. params.yaml); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise SeedscopeError(
                f"Unknown TrainConfig key(s): {', '.join(unknown)}.",
                f"use only: {', '.join(sorted(known))}.",
            )
        return cls(**params)

    @classmethod
    def smoke(cls, **overrides: Any) -> TrainConfig:
        """A tiny configuration that trains a suite in seconds (smoke profile, tests)."""
        base: dict[str, Any] = {
            "sizes": {k: dict(v) for k, v in SMOKE_SIZES.items()},
            "context": 128,
            "batch_size": 8,
            "warmup": 5,
            "eval_windows": 16,
            "probe_sequences": 4,
        }
        return cls(**{**base, **overrides})

    def seeds(self, run: Run) -> tuple[int, int]:
        """(init_seed, data_seed) of `run`."""
        init = run.seed if self.init_seed is None else self.init_seed
        data = run.seed if self.data_seed is None else self.data_seed
        return init, data

    def fingerprint(self) -> str:
        """Hash of every field that changes weights (not workers nor the diagnostics)."""
        skip = ("workers", "eval_windows", "probe_sequences", "probe_min_count")
        payload = {k: v for k, v in asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """The corpus a run trains on.

    `train`: 1-D int64 token stream (documents separated by EOS); `eval`: int64
    `[n_windows, window]`; `tokenizer_files`: name -> path of the tokenizer files.
    """

    train: np.ndarray
    eval: np.ndarray
    vocab_size: int
    eos_id: int
    tokenizer_files: dict[str, Path]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.train[:100_000]).tobytes())
        digest.update(f"{len(self.train)}:{self.vocab_size}:{self.eos_id}".encode())
        return digest.hexdigest()[:16]


def load_corpus(corpus_dir: str | os.PathLike[str]) -> Corpus:
    """Read `tokenizer/`, `train_tokens.npy` and `eval_tokens.npy` from a corpus folder."""
    folder = Path(corpus_dir)
    tok_dir = folder / "tokenizer"
    needed = [tok_dir, folder / "train_tokens.npy", folder / "eval_tokens.npy"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SeedscopeError(
            f"Corpus folder {folder} lacks {', '.join(missing)}.",
            "build the corpus first (stage `corpus`, seedscope.data.corpus.build_corpus).",
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if tokenizer.eos_token_id is None:
        raise SeedscopeError(
            f"The tokenizer in {tok_dir} has no EOS token.", "rebuild it with <|endoftext|>."
        )
    train = np.load(folder / "train_tokens.npy").astype(np.int64)
    evals = np.load(folder / "eval_tokens.npy").astype(np.int64)
    vocab = len(tokenizer)
    top = max(int(train.max(initial=0)), int(evals.max(initial=0)))
    if train.ndim != 1 or evals.ndim != 2 or top >= vocab:
        raise SeedscopeError(
            f"Corpus in {folder} does not match its tokenizer (train shape {train.shape}, eval "
            f"shape {evals.shape}, largest id {top}, vocab {vocab}).",
            "rebuild the corpus: train_tokens 1-D, eval_tokens [n_windows, window], ids < vocab.",
        )
    files = {p.name: p for p in sorted(tok_dir.iterdir()) if p.is_file()}
    return Corpus(train, evals, vocab, int(tokenizer.eos_token_id), files)


def batch_indices(n_chunks: int, batch_size: int, data_seed: int, step: int) -> np.ndarray:
    """Chunk indices `[batch_size]` of the batch at `step`.

    The stream of chunks is epoch after epoch of `default_rng([data_seed, epoch])`
    permutations of `range(n_chunks)`; step `s` takes samples `s*B .. s*B+B-1` of it, so the
    data position of a run is its step and resuming needs no data-loader state.
    """
    sample = step * batch_size + np.arange(batch_size)
    epochs, within = np.divmod(sample, n_chunks)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([data_seed, int(epoch)]).permutation(n_chunks)
        mask = epochs == epoch
        out[mask] = perm[within[mask]]
    return out


def copy_share_at(step: int, cfg: TrainConfig) -> float:
    """Share of training rows that carry a planted copy at `step` (linear anneal)."""
    if cfg.copy_anneal_steps <= 0:
        return cfg.copy_share
    frac = min(1.0, step / cfg.copy_anneal_steps)
    return cfg.copy_share + (cfg.copy_share_final - cfg.copy_share) * frac


def plant_copies(
    rows: np.ndarray, step: int, data_seed: int, cfg: TrainConfig, ids: np.ndarray
) -> np.ndarray:
    """A copy of `rows` `[B, context]` in which each row, with probability
    `copy_share_at(step)`, holds a span of distinct ids uniform over `ids`, then a gap of
    its own text of random length, then the span again, at a random offset: nothing but
    copying predicts the second span, and neither the gap nor the position gives a shortcut
    (Kawata et al. 2025; Bi-Induct, Sabry & Belz 2025 anneal such copies). The draws depend
    only on (data_seed, step), so a resumed run sees the same batches."""
    share = copy_share_at(step, cfg)
    out = rows.copy()
    if share <= 0:
        return out
    rng = np.random.default_rng([data_seed, step, 0xC0B1])
    context = rows.shape[1]
    for row in np.flatnonzero(rng.random(len(rows)) < share):
        length = int(rng.integers(cfg.copy_min_len, cfg.copy_max_len + 1))
        gap = int(rng.integers(0, context - 2 * length + 1))
        start = int(rng.integers(0, context - 2 * length - gap + 1))
        span = rng.choice(ids, size=length, replace=False)
        out[row, start : start + length] = span
        out[row, start + length + gap : start + 2 * length + gap] = span
    return out


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray) -> float:
    """Cross-entropy (nats/token) of an add-one unigram model fitted on `train_tokens`.

    `train_tokens`: 1-D; `eval_tokens`: `[n_windows, window]`. Scored on the targets the
    language model is scored on, `eval_tokens[:, 1:]` (position 0 has no context).
    """
    train = np.asarray(train_tokens).ravel().astype(np.int64)
    targets = np.asarray(eval_tokens)[:, 1:].ravel().astype(np.int64)
    vocab = int(max(train.max(initial=0), targets.max(initial=0))) + 1
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts) - np.log(counts.sum())
    return float(-logp[targets].mean())


# --------------------------------------------------------------------------- model


def build_model(
    spec: dict[str, int], vocab_size: int, eos_id: int, cfg: TrainConfig, init_seed: int
) -> Any:
    """A freshly initialised `GPT2LMHeadModel` (dropout off), a pure function of `init_seed`.

    With `position_init="sinusoidal"` the (still learned) position embeddings `[context,
    n_embd]` start as `scale * [sin, cos]` of the position, which lets a previous-token head
    form early; the global torch RNG is left as it was.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.context,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # GPT-2's class name maps to no loss type: say it
    if cfg.position_init == "sinusoidal":
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(
                cfg.position_init_scale * sinusoidal_positions(cfg.context, spec["n_embd"])
            )
    if cfg.prev_token_heads:
        _init_previous_token_heads(model, spec, cfg.prev_token_heads, cfg.prev_token_gain)
    model.set_attn_implementation("sdpa")
    return model


def _init_previous_token_heads(model: Any, spec: dict[str, int], heads: int, gain: float) -> None:
    """Initialise the query/key weights of the first `heads` heads of layer 0 so that they
    attend to the previous position (weights stay learned; values and outputs stay random).

    With sinusoidal positions, the LayerNorm output at position i is ~ sqrt(2) * [sin(w i),
    cos(w i)] per frequency pair; the key copies the pair, the query rotates it back by one
    step (w), so q_i . k_j ~ sum_w cos(w (i - 1 - j)), largest at j = i - 1. Uses the
    head_dim / 2 highest frequencies; `gain` scales the query.
    """
    d, dh = spec["n_embd"], spec["n_embd"] // spec["n_head"]
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    weight = model.transformer.h[0].attn.c_attn.weight  # Conv1D [d, 3d]: x @ W -> q | k | v
    with torch.no_grad():
        for h in range(heads):
            q0, k0 = h * dh, d + h * dh
            weight[:, q0 : q0 + dh] = 0.0
            weight[:, k0 : k0 + dh] = 0.0
            for m in range(dh // 2):
                c, s = math.cos(freq[m]), math.sin(freq[m])
                sin_dim, cos_dim = 2 * m, 2 * m + 1
                weight[sin_dim, k0 + sin_dim] = 1.0
                weight[cos_dim, k0 + cos_dim] = 1.0
                # sin(w(i-1)) = sin(wi) cos w - cos(wi) sin w; cos(w(i-1)) = cos cos + sin sin
                weight[sin_dim, q0 + sin_dim] = gain * c
                weight[cos_dim, q0 + sin_dim] = -gain * s
                weight[cos_dim, q0 + cos_dim] = gain * c
                weight[sin_dim, q0 + cos_dim] = gain * s


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """Transformer sinusoidal position codes `[n_positions, dim]` (sin on even, cos on odd)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    out = torch.zeros(n_positions, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out.float()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of the update taken at `step` (0-based): linear warm-up, then cosine
    decay to `min_lr_ratio * lr` at `total`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, total - cfg.warmup)
    frac = min(1.0, (step - cfg.warmup) / span)
    cos = 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


def probe_sequences(
    token_ids: np.ndarray, eos_id: int, length: int, n_seq: int, seed: int = 0
) -> torch.Tensor:
    """`[n_seq, 1 + 2*length]` LongTensor `[EOS, r_1..r_L, r_1..r_L]`; each half holds `L`
    distinct ids of `token_ids`, drawn without replacement with `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    choices = np.asarray(token_ids, dtype=np.int64)
    if choices.size < length:
        raise SeedscopeError(
            f"The induction probe needs {length} distinct ids, only {choices.size} qualify.",
            "lower probe_min_count (or the context).",
        )
    span = choices[np.argsort(rng.random((n_seq, choices.size)), axis=1)[:, :length]]
    return torch.from_numpy(np.concatenate([np.full((n_seq, 1), eos_id), span, span], axis=1))


def induction_probe(
    model: Any,
    token_ids: np.ndarray,
    eos_id: int,
    length: int,
    n_seq: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Induction diagnostics on `n_seq` sequences `[EOS, r_1..r_L, r_1..r_L]`, each half `L`
    (= `length`) distinct ids drawn without replacement from `token_ids` with
    `default_rng(seed)`, so every second-copy target is unambiguous (with replacement, most
    sequences would hold an accidental repeat). The trainer passes the non-EOS ids seen at
    least `probe_min_count` times in training (an id never trained has an untrained
    embedding) and, beside it, every non-EOS id.

    Returns `first_loss` / `second_loss`: mean next-token loss (nats) on the targets r_2..r_L
    of the first and of the second copy (the second copy's r_1 is unpredictable and
    excluded); `ratio` = second / first; `induction_score`: over heads, the largest mean
    attention from each second-copy query r_j (position L+j) to the token after its earlier
    occurrence (position j+1); the EOS/BOS position is never a query nor a target.
    """
    from seedscope.models.hooks import eager_attention, induction_positions

    seq = probe_sequences(token_ids, eos_id, length, n_seq, seed)
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model), torch.no_grad():
            out = model(seq, output_attentions=True)
    finally:
        model.train(was_training)
    logp = torch.log_softmax(out.logits.double(), dim=-1)
    nll = -logp[:, :-1].gather(-1, seq[:, 1:, None])[..., 0]  # nll[:, t]: target at t+1
    first = nll[:, 1:length].mean().item()  # targets at positions 2..L  (r_2..r_L)
    second = nll[:, length + 1 :].mean().item()  # targets at positions L+2..2L
    query, key = map(torch.from_numpy, induction_positions(length))  # analysis 6's positions
    scores = torch.stack([a[:, :, query, key].mean(dim=(0, 2)) for a in out.attentions])
    return {
        "first_loss": first,
        "second_loss": second,
        "ratio": second / first,
        "induction_score": float(scores.max()),
    }


# --------------------------------------------------------------------------- training


def _run_file(log_dir: Path, run: Run, suffix: str) -> Path:
    return log_dir / f"{repo_slug(run.repo_id)}{suffix}"


def loss_log_path(log_dir: Path, run: Run) -> Path:
    """Where `train_suite` writes a run's training loss (`step`, `loss` per logged step)."""
    return _run_file(log_dir, run, ".loss.parquet")


def default_log_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """Where training logs and resume state go when no `log_dir` is given."""
    return Path(cache_dir).parent / "train_logs"


def _save_snapshot(
    model: Any, cache_dir: Path, suite: Suite, run: Run, step: int, corpus: Corpus
) -> None:
    from transformers.utils import logging as hf_logging

    cache_dir.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
    try:
        prefix = f".ckpt-{repo_slug(run.repo_id)}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=cache_dir) as tmp:
            model.save_pretrained(tmp)
            files: dict[str, Any] = {p.name: p for p in Path(tmp).iterdir() if p.is_file()}
            files.update(corpus.tokenizer_files)
            write_snapshot(cache_dir, run.repo_id, suite.revision(step), files, symlinks=False)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _remove_partial_writes(cache: Path, logs: Path, run: Run) -> None:
    """Delete what a kill left half-written for this run (never another run's files, so
    parallel workers are safe): staging folders, `.tmp-*` files of its snapshots and logs."""
    flat = repo_slug(run.repo_id)
    for staging in cache.glob(f".ckpt-{flat}-*"):
        shutil.rmtree(staging, ignore_errors=True)
    for partial in repo_folder(cache, run.repo_id).rglob(".tmp-*"):
        partial.unlink(missing_ok=True)
    for partial in logs.glob(f".tmp-{flat}.*"):
        partial.unlink(missing_ok=True)


def train_run(
    suite: Suite,
    run: Run,
    corpus_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    progress: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `run` of `suite` to `suite.final_step`, writing each schedule step as revision
    `suite.revision(step)` of `run.repo_id` in the hub cache `cache_dir`.

    Resumes from the state saved at the last checkpoint (`log_dir/<repo>.state.pt`) and
    skips a run whose every revision is cached. Writes `log_dir/<repo>.loss.parquet`
    (step, lr, loss: the loss of the update taken at step-1 -> step) and
    `log_dir/<repo>.checkpoints.parquet` (induction probe and eval loss per checkpoint).
    `on_step(step)` is called after each update (tests use it to kill the process).
    Returns a summary dict (run, final train/eval loss, tokens/s, wall seconds).
    """
    if run.size not in cfg.sizes:
        raise SeedscopeError(
            f"Run {run.name!r} has size {run.size!r}, which TrainConfig.sizes lacks.",
            f"add {run.size!r} to `sizes` (have: {', '.join(cfg.sizes)}).",
        )
    cache = Path(cache_dir)
    logs = Path(log_dir) if log_dir is not None else default_log_dir(cache)
    corpus = load_corpus(corpus_dir)
    n_chunks = len(corpus.train) // cfg.context
    if n_chunks < cfg.batch_size:
        raise SeedscopeError(
            f"The corpus has {len(corpus.train)} training tokens, fewer than one batch "
            f"({cfg.batch_size} x {cfg.context}).",
            "build a larger corpus or lower batch_size/context.",
        )
    if corpus.eval.shape[1] > cfg.context:
        raise SeedscopeError(
            f"Eval windows ({corpus.eval.shape[1]} tokens) are longer than the context "
            f"({cfg.context}).",
            "raise `context` to at least the corpus window.",
        )
    _remove_partial_writes(cache, logs, run)
    schedule = tuple(suite.steps)
    init_seed, data_seed = cfg.seeds(run)
    fingerprint = hashlib.sha256(
        f"{cfg.fingerprint()}:{corpus.fingerprint()}:{init_seed}:{data_seed}:{schedule}".encode()
    ).hexdigest()[:16]
    plan = _RunPlan(
        suite=suite, run=run, corpus=corpus, cfg=cfg, cache=cache, logs=logs,
        schedule=schedule, n_chunks=n_chunks, init_seed=init_seed, data_seed=data_seed,
        fingerprint=fingerprint, have=frozenset(cached_revisions(cache, run.repo_id)),
    )  # fmt: skip
    done = all(suite.revision(s) in plan.have for s in schedule)
    if plan.meta_path.exists() and read_json(plan.meta_path).get("fingerprint") != fingerprint:
        raise SeedscopeError(
            f"Run {run.name!r} in {cache} / {logs} was trained with another config or corpus.",
            f"delete its cache folder and {logs}/{repo_slug(run.repo_id)}.* to retrain.",
        )
    if done and plan.loss_path.exists() and plan.meta_path.exists():
        summary = read_json(plan.meta_path)["summary"]
        if summary:
            return {**summary, "skipped": True}

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads_per_worker)
    try:
        return _train(plan, progress, on_step)
    finally:
        torch.set_num_threads(old_threads)


@dataclass(frozen=True)
class _RunPlan:
    """What one run's training is fixed by before its first update: the suite and run, the
    corpus and config, where it writes, its seeds, schedule and fingerprint, and which
    revisions the hub cache already holds."""

    suite: Suite
    run: Run
    corpus: Corpus
    cfg: TrainConfig
    cache: Path
    logs: Path
    schedule: tuple[int, ...]
    n_chunks: int
    init_seed: int
    data_seed: int
    fingerprint: str
    have: frozenset[str]

    @property
    def state_path(self) -> Path:  # the resume point: weights, optimizer, step, history
        return _run_file(self.logs, self.run, ".state.pt")

    @property
    def loss_path(self) -> Path:
        return loss_log_path(self.logs, self.run)

    @property
    def ckpt_path(self) -> Path:  # induction probe and eval loss per checkpoint
        return _run_file(self.logs, self.run, ".checkpoints.parquet")

    @property
    def meta_path(self) -> Path:  # fingerprint and the finished run's summary
        return _run_file(self.logs, self.run, ".meta.json")


@dataclass
class _TrainState:
    """What changes as a run trains (and what its state file saves to resume from)."""

    model: Any
    optimizer: Any
    step: int = 0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    probes: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass(frozen=True)
class _ProbeInputs:
    """The fixed inputs of the per-checkpoint measurements: eval windows, probe tokens."""

    eval_windows: torch.Tensor
    probe_len: int
    probe_ids: np.ndarray
    all_ids: np.ndarray


def _train(plan: _RunPlan, progress: bool, on_step: Callable[[int], None] | None) -> dict[str, Any]:
    """Build (or resume) the model, take every update to the final step, checkpointing on
    the schedule; write and return the run's summary."""
    from tqdm.auto import tqdm

    cfg, corpus, total = plan.cfg, plan.corpus, plan.schedule[-1]
    on_schedule = set(plan.schedule)
    st = _initial_state(plan)
    chunks = corpus.train[: plan.n_chunks * cfg.context].reshape(plan.n_chunks, cfg.context)
    probe = _probe_inputs(plan)
    copy_ids = np.setdiff1d(np.arange(corpus.vocab_size), [corpus.eos_id])
    plan.logs.mkdir(parents=True, exist_ok=True)
    write_json(plan.meta_path, {"fingerprint": plan.fingerprint, "summary": {}})
    if st.step in on_schedule:
        _checkpoint(plan, st, probe, st.step)
    tokens_per_step = cfg.batch_size * cfg.context
    start_step, t0 = st.step, time.perf_counter()
    bar = tqdm(
        total=total, initial=st.step, desc=plan.run.name, disable=not progress,
        mininterval=1.0, leave=True, dynamic_ncols=True,
    )  # fmt: skip
    while st.step < total:
        rows = chunks[batch_indices(plan.n_chunks, cfg.batch_size, plan.data_seed, st.step)]
        x = torch.from_numpy(plant_copies(rows, st.step, plan.data_seed, cfg, copy_ids))
        _update(st, x, lr_at(st.step, total, cfg), cfg)
        if st.step in on_schedule:
            _checkpoint(plan, st, probe, st.step)
        elapsed = time.perf_counter() - t0
        bar.update(1)
        if st.step % 10 == 0:
            rate = (st.step - start_step) * tokens_per_step / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{np.mean(st.losses[-10:]):.3f}", tok_s=f"{rate:,.0f}")
        if on_step is not None:
            on_step(st.step)
    bar.close()
    return _finish(plan, st, start_step, time.perf_counter() - t0)


def _initial_state(plan: _RunPlan) -> _TrainState:
    """The model from its init seed and AdamW (no decay on biases, norms and `wpe`), resumed
    from the run's state file when its fingerprint matches."""
    cfg, corpus = plan.cfg, plan.corpus
    spec = cfg.sizes[plan.run.size]
    model = build_model(spec, corpus.vocab_size, corpus.eos_id, cfg, plan.init_seed)
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "wpe" not in name else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    st = _TrainState(model=model, optimizer=optimizer)
    if plan.state_path.exists():
        state = torch.load(plan.state_path, map_location="cpu", weights_only=True)
        if state["fingerprint"] == plan.fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            st.step = st.resumed_from = int(state["step"])
            st.losses = [float(x) for x in state["losses"].tolist()]
            st.lrs = [float(x) for x in state["lrs"].tolist()]
            st.probes = json.loads(state["probes"])
    return st


def _probe_inputs(plan: _RunPlan) -> _ProbeInputs:
    """Eval windows, and the tokens the induction probe may repeat: seen at least
    `probe_min_count` times in training (and, for the all-ids probe, any seen token)."""
    cfg, corpus = plan.cfg, plan.corpus
    counts = np.bincount(corpus.train, minlength=corpus.vocab_size)
    counts[corpus.eos_id] = -1  # never a probe token
    return _ProbeInputs(
        eval_windows=torch.from_numpy(corpus.eval[: cfg.eval_windows]),
        probe_len=(cfg.context - 1) // 2,
        probe_ids=np.flatnonzero(counts >= max(cfg.probe_min_count, 1)),
        all_ids=np.flatnonzero(counts >= 0),
    )


def _update(st: _TrainState, x: torch.Tensor, lr: float, cfg: TrainConfig) -> None:
    """One AdamW update on batch `x` at learning rate `lr` (gradients clipped)."""
    for group in st.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        loss = st.model(input_ids=x, labels=x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
    st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    st.losses.append(float(loss.detach()))
    st.lrs.append(lr)


def _checkpoint(plan: _RunPlan, st: _TrainState, probe: _ProbeInputs, at: int) -> None:
    """Measure the checkpoint (once), then write the state first (the resume point), then
    the snapshot, then the logs."""
    cfg, corpus, model = plan.cfg, plan.corpus, st.model
    if not st.probes or st.probes[-1]["step"] != at:
        args = (corpus.eos_id, probe.probe_len, cfg.probe_sequences)
        scores = induction_probe(model, probe.probe_ids, *args)
        every = induction_probe(model, probe.all_ids, *args)
        every = {f"all_ids_{k}": v for k, v in every.items()}
        loss = eval_loss(model, probe.eval_windows)
        st.probes = [*st.probes, {"step": at, "eval_loss": loss, **scores, **every}]
    if at > 0:
        # Saved through a handle: torch.save(path) embeds the (random) temp file name.
        with atomic_path(plan.state_path) as tmp, open(tmp, "wb") as handle:
            torch.save(
                {
                    "fingerprint": plan.fingerprint,
                    "step": at,
                    "model": model.state_dict(),
                    "optimizer": st.optimizer.state_dict(),
                    "losses": torch.tensor(st.losses, dtype=torch.float64),
                    "lrs": torch.tensor(st.lrs, dtype=torch.float64),
                    "probes": json.dumps(st.probes),
                },
                handle,
            )
    if plan.suite.revision(at) not in plan.have:
        _save_snapshot(model, plan.cache, plan.suite, plan.run, at, corpus)
    steps = np.arange(1, len(st.losses) + 1)
    write_parquet(plan.loss_path, pd.DataFrame({"step": steps, "lr": st.lrs, "loss": st.losses}))
    write_parquet(plan.ckpt_path, pd.DataFrame(st.probes))


def _finish(plan: _RunPlan, st: _TrainState, start_step: int, wall: float) -> dict[str, Any]:
    """The run's summary: written (what the weights determine) to its meta file, returned
    whole (with timings and resume history)."""
    cfg, corpus, run = plan.cfg, plan.corpus, plan.run
    final = st.probes[-1]
    tokens_per_step = cfg.batch_size * cfg.context
    summary = {
        "run": run.name,
        "repo_id": run.repo_id,
        "size": run.size,
        "seed": run.seed,
        "init_seed": plan.init_seed,
        "data_seed": plan.data_seed,
        "steps": plan.schedule[-1],
        "final_train_loss": float(np.mean(st.losses[-20:])) if st.losses else float("nan"),
        "final_eval_loss": final["eval_loss"],
        "unigram_eval_loss": unigram_loss(corpus.train, corpus.eval[: cfg.eval_windows]),
        "final_ratio": final["ratio"],
        "final_induction_score": final["induction_score"],
        "final_induction_score_all_ids": final.get("all_ids_induction_score", float("nan")),
        "final_ratio_all_ids": final.get("all_ids_ratio", float("nan")),
        "tokens_per_s": (st.step - start_step) * tokens_per_step / wall
        if st.step > start_step
        else 0,
        "wall_s": wall,
        "resumed_from": st.resumed_from,
    }
    # Only what the weights determine is written: timings and resume history vary by run.
    stable = {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY_KEYS}
    write_json(plan.meta_path, {"fingerprint": plan.fingerprint, "summary": stable})
    return {**summary, "skipped": False}


def eval_loss(model: Any, windows: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token loss (nats) of `model` on `windows` `[n, window]` (targets 1..window-1)."""
    if len(windows) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i : i + batch]
            logits = model(input_ids=x).logits.double()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def _worker(args: tuple) -> dict[str, Any]:
    suite, run, corpus_dir, cache_dir, cfg, log_dir, progress = args
    return train_run(suite, run, corpus_dir, cache_dir, cfg, progress=progress, log_dir=log_dir)


def train_suite(
    suite: Suite,
    corpus_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    log_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every run of `suite` with `cfg.workers` spawned processes (one run each at a
    time, `cfg.threads_per_worker` threads); weights do not depend on the worker count.

    Returns one row per run (suite order): run, size, seed, final train/eval loss, final
    second/first-copy loss ratio and induction score, tokens/s, wall seconds.
    """
    missing = sorted({r.size for r in suite.runs} - set(cfg.sizes))
    if missing:
        raise SeedscopeError(
            f"Suite {suite.name!r} has size(s) {', '.join(missing)} that TrainConfig.sizes lacks.",
            "add them to `sizes`.",
        )
    load_corpus(corpus_dir)  # fail early
    logs = Path(log_dir) if log_dir is not None else default_log_dir(cache_dir)
    # Largest runs first so the workers finish together.
    order = sorted(
        suite.runs,
        key=lambda r: -(cfg.sizes[r.size]["n_layer"] * cfg.sizes[r.size]["n_embd"] ** 2),
    )
    tasks = [(suite, r, str(corpus_dir), str(cache_dir), cfg, str(logs), progress) for r in order]
    if cfg.workers == 1:
        results = [_worker(t) for t in tasks]
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(cfg.workers, len(tasks)), maxtasksperchild=1) as pool:
            results = pool.map(_worker, tasks, chunksize=1)
    by_name = {r["run"]: r for r in results}
    frame = pd.DataFrame([by_name[r.name] for r in suite.runs])
    stable = frame.drop(columns=[c for c in VOLATILE_SUMMARY_KEYS if c in frame.columns])
    write_parquet(logs / f"{suite.name}.summary.parquet", stable)
    return frame
