"""Tests for seedscope.models.train: config validation, determinism, kill -9 resume, hub-cache
round trip, init/data seed decoupling, and the small helpers against hand-computed answers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from seedscope.core.errors import SeedscopeError
from seedscope.models.hubcache import cached_revisions, repo_folder
from seedscope.models.train import (
    TrainConfig,
    batch_indices,
    build_model,
    copy_share_at,
    induction_probe,
    load_corpus,
    lr_at,
    plant_copies,
    probe_sequences,
    train_run,
    train_suite,
    unigram_loss,
)
from seedscope.suites.registry import Run, Suite

STEPS = (0, 5, 10, 15, 20)
RUNS = (
    Run(name="small-x1", repo_id="test/tiny-small-x1", seed=1, size="small"),
    Run(name="small-x2", repo_id="test/tiny-small-x2", seed=2, size="small"),
)
SUITE = Suite(
    name="tiny",
    description="test suite",
    architecture="gpt2",
    revision_format="checkpoint-{step}",
    tokenizer="local",
    steps=STEPS,
    runs=RUNS,
)
# With planted copies (annealed inside the schedule), so determinism and kill/resume cover them.
COPIES = dict(copy_share=0.5, copy_anneal_steps=15, copy_min_len=2, copy_max_len=6)
CFG = TrainConfig.smoke(context=16, batch_size=4, eval_windows=4, probe_sequences=2, **COPIES)


def _safetensors(cache: Path, run: Run, step: int) -> bytes:
    folder = repo_folder(cache, run.repo_id)
    commit = cached_revisions(cache, run.repo_id)[f"checkpoint-{step}"]
    return (folder / "snapshots" / commit / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny corpus: byte-level BPE tokenizer, random train tokens with repeats, eval windows."""
    import hubfake

    out = tmp_path_factory.mktemp("corpus")
    tok = hubfake.tiny_tokenizer(out / "tokenizer")
    vocab, eos = len(tok), tok.eos_token_id
    rng = np.random.default_rng(0)
    span = rng.integers(1, vocab, size=(300, 8))
    train = np.concatenate([np.tile(span, 2), np.full((300, 1), eos)], axis=1).ravel()
    np.save(out / "train_tokens.npy", train.astype(np.uint16))
    evals = rng.integers(1, vocab, size=(4, 16))
    evals[:, 0] = eos
    np.save(out / "eval_tokens.npy", evals.astype(np.int32))
    return out


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both runs trained uninterrupted, in process; and run 1 trained again elsewhere."""
    root = tmp_path_factory.mktemp("ref")
    summaries = [
        train_run(SUITE, run, corpus, root / "hub", CFG, progress=False, log_dir=root / "logs")
        for run in RUNS
    ]
    again = train_run(
        SUITE, RUNS[0], corpus, root / "hub2", CFG, progress=False, log_dir=root / "logs2"
    )
    return {"root": root, "summaries": summaries, "again": again}


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"context": 4}, "context"),
        ({"position_init": "rotary"}, "position_init"),
        ({"init_seed": "x"}, "init_seed"),
        ({"sizes": {"small": {"n_layer": 2, "n_head": 3, "n_embd": 16}}}, "sizes.small"),
        ({"sizes": {"small": {"n_layer": 2}}}, "sizes.small"),
        ({"weight_decay": 2.0}, "weight_decay"),
        ({"bf16": "yes"}, "bf16"),
        ({"prev_token_heads": 3}, "prev_token_heads"),
        ({"prev_token_heads": 1, "position_init": "default"}, "prev_token_heads"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(SeedscopeError, match=f"`{key}`") as err:
        TrainConfig(**overrides)
    assert "Fix:" in str(err.value)


def test_config_from_dict_rejects_unknown_keys_and_accepts_known() -> None:
    with pytest.raises(SeedscopeError, match="lr_max"):
        TrainConfig.from_dict({"lr_max": 1.0})
    cfg = TrainConfig.from_dict({"lr": 0.5, "init_seed": 3})
    assert (cfg.lr, cfg.init_seed) == (0.5, 3)
    run = RUNS[1]
    assert cfg.seeds(run) == (3, run.seed)


def test_unknown_size_is_an_error_before_training(corpus: Path, tmp_path: Path) -> None:
    run = Run(name="big-x1", repo_id="test/big", seed=1, size="big")
    with pytest.raises(SeedscopeError, match="'big'"):
        train_run(SUITE, run, corpus, tmp_path / "hub", CFG, progress=False)
    assert not (tmp_path / "hub").exists()


# ------------------------------------------------------------------ helpers


def test_batch_indices_cover_every_chunk_once_per_epoch() -> None:
    n_chunks, batch = 10, 4
    stream = np.concatenate([batch_indices(n_chunks, batch, 7, s) for s in range(5)])  # 20
    np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(stream[10:20]), np.arange(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # each epoch its own order
    np.testing.assert_array_equal(batch_indices(n_chunks, batch, 7, 3), stream[12:16])
    assert not np.array_equal(batch_indices(n_chunks, batch, 8, 0), stream[:4])


def test_plant_copies_writes_a_span_a_gap_and_the_same_span_deterministically() -> None:
    cfg = TrainConfig(context=64, copy_share=0.75, copy_anneal_steps=100, copy_share_final=0.25)
    rows = np.zeros((400, 64), dtype=np.int64)  # "text" of id 0; span ids are 1..511
    ids = np.arange(1, 512)
    out = plant_copies(rows, 7, 3, cfg, ids)
    assert np.array_equal(out, plant_copies(rows, 7, 3, cfg, ids))
    assert not np.array_equal(out, plant_copies(rows, 8, 3, cfg, ids))
    assert not rows.any()  # the input is left alone
    planted = out.any(axis=1)
    assert 0.65 < planted.mean() < 0.85  # share at step 7: 0.75 - 0.5 * 0.07 = 0.715
    gaps, starts = [], []
    for row in out[planted]:
        where = np.flatnonzero(row)
        n = len(where) // 2
        first, second = row[where[:n]], row[where[n:]]
        assert cfg.copy_min_len <= n <= cfg.copy_max_len
        assert np.array_equal(first, second) and len(set(first)) == n  # distinct ids
        assert np.array_equal(np.diff(where[:n]), np.ones(n - 1))  # contiguous copies
        gaps.append(where[n] - where[n - 1] - 1)
        starts.append(where[0])
    assert min(gaps) == 0 and max(gaps) > 20 and len(set(starts)) > 20  # no fixed offsets
    assert copy_share_at(0, cfg) == 0.75 and copy_share_at(50, cfg) == pytest.approx(0.5)
    assert copy_share_at(100, cfg) == copy_share_at(10**6, cfg) == 0.25
    off = TrainConfig(context=64)
    assert np.array_equal(plant_copies(out, 7, 3, off, ids), out)


@pytest.mark.parametrize(
    "overrides",
    [
        {"copy_share": 0.5, "copy_max_len": 40},
        {"copy_share_final": 0.5, "copy_anneal_steps": 10, "copy_max_len": 40},  # rises later
        {"copy_share": 1.5},
        {"copy_anneal_steps": -1},
    ],
)
def test_copy_settings_that_cannot_work_are_refused(overrides: dict) -> None:
    with pytest.raises(SeedscopeError, match="copy"):
        TrainConfig(context=64, **overrides)


def test_unigram_loss_matches_hand_computation() -> None:
    train = np.array([0, 0, 1, 2])  # add-one counts 3, 2, 2 -> probabilities 3/7, 2/7, 2/7
    evals = np.array([[2, 0, 1], [0, 0, 0]])  # targets (columns 1:) 0, 1, 0, 0
    expected = -(3 * math.log(3 / 7) + math.log(2 / 7)) / 4
    assert unigram_loss(train, evals) == pytest.approx(expected)


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(lr=1.0, warmup=4, min_lr_ratio=0.1)
    assert [lr_at(s, 104, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(54, 104, cfg) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_at(104, 104, cfg) == pytest.approx(0.1)


def test_induction_probe_on_untrained_model_sees_no_copying(corpus: Path) -> None:
    data = load_corpus(corpus)
    model = build_model(CFG.sizes["small"], data.vocab_size, data.eos_id, CFG, init_seed=0)
    ids = np.arange(1, data.vocab_size)
    probe = induction_probe(model, ids, data.eos_id, length=7, n_seq=8)
    # At init the model predicts ~uniformly and attends ~uniformly: no copy benefit.
    assert probe["first_loss"] == pytest.approx(math.log(data.vocab_size), rel=0.02)
    assert probe["ratio"] == pytest.approx(1.0, abs=0.02)
    assert probe["induction_score"] == pytest.approx(1 / 8, abs=0.1)  # queries see 8..14 keys


def test_the_trainers_induction_probe_is_analysis_6s_head_score(corpus: Path) -> None:
    """Training logs an induction score and analysis 6 scores heads: one definition
    (`models.hooks.induction_positions`), so on the same sequences the trainer's score is
    the best head's `induction` score, and its second-copy loss is analysis 6's (the first
    copy differs on purpose: the trainer leaves out r_1, which only the BOS precedes)."""
    import torch

    from seedscope.analyses.induction import head_scores

    data = load_corpus(corpus)
    torch.manual_seed(3)
    model = build_model(CFG.sizes["small"], data.vocab_size, data.eos_id, CFG, init_seed=3)
    with torch.no_grad():  # sharpen attention so heads differ (untrained ones are ~uniform)
        for p in model.parameters():
            p.mul_(8.0)
    ids = np.arange(1, data.vocab_size)
    probe = induction_probe(model, ids, data.eos_id, length=7, n_seq=8, seed=5)
    seqs = probe_sequences(ids, data.eos_id, 7, 8, 5)
    scored = head_scores(model, seqs)
    heads = scored.heads
    assert heads["induction"].std() > 0.01  # the heads are not all alike
    assert probe["induction_score"] == pytest.approx(heads["induction"].max(), rel=1e-5)
    second = scored.second_copy_loss.mean()
    assert probe["second_loss"] == pytest.approx(second, rel=1e-5)


def test_probe_sequences_draw_each_half_without_replacement() -> None:
    ids = np.array([3, 5, 8, 13, 21, 34, 55])
    seq = probe_sequences(ids, eos_id=0, length=7, n_seq=50, seed=1).numpy()
    assert seq.shape == (50, 15)
    assert (seq[:, 0] == 0).all()
    np.testing.assert_array_equal(seq[:, 1:8], seq[:, 8:])
    # 7 of 7 ids: every half is a permutation of them (with replacement: almost never)
    assert all(sorted(row) == sorted(ids) for row in seq[:, 1:8])
    assert len({tuple(row) for row in seq[:, 1:8]}) > 40  # and the order is random
    with pytest.raises(SeedscopeError, match="distinct ids"):
        probe_sequences(ids, eos_id=0, length=8, n_seq=2)


def test_previous_token_init_makes_layer0_heads_attend_one_back(corpus: Path) -> None:
    data = load_corpus(corpus)
    spec = {"n_layer": 2, "n_head": 4, "n_embd": 64}
    cfg = TrainConfig(sizes={"m": spec}, context=16, position_init="sinusoidal", prev_token_heads=2)
    model = build_model(spec, data.vocab_size, data.eos_id, cfg, init_seed=0)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(torch.from_numpy(data.eval), output_attentions=True).attentions[0]
    prev = torch.diagonal(att, offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2)).numpy()
    # Planted heads 0, 1 put most weight one back; random heads ~ uniform over <= 16 keys.
    np.testing.assert_allclose(prev[:2], 0.8, atol=0.2)
    np.testing.assert_allclose(prev[2:], 1 / 8, atol=0.1)


# ------------------------------------------------------------------ training


def test_same_seed_gives_bit_identical_weights_and_different_seeds_differ(
    reference: dict,
) -> None:
    root = reference["root"]
    for step in STEPS:
        assert _safetensors(root / "hub", RUNS[0], step) == _safetensors(
            root / "hub2", RUNS[0], step
        )
    assert _safetensors(root / "hub", RUNS[0], 20) != _safetensors(root / "hub", RUNS[1], 20)
    losses = [
        pd.read_parquet(root / d / "test--tiny-small-x1.loss.parquet") for d in ("logs", "logs2")
    ]
    pd.testing.assert_frame_equal(*losses)
    assert list(losses[0]["step"]) == list(range(1, 21))
    assert reference["summaries"][0]["final_train_loss"] == pytest.approx(
        losses[0]["loss"].iloc[-20:].mean()
    )


def test_finished_run_is_skipped(reference: dict, corpus: Path) -> None:
    root = reference["root"]
    again = train_run(
        SUITE, RUNS[0], corpus, root / "hub", CFG, progress=False, log_dir=root / "logs"
    )
    assert again["skipped"] is True
    assert again["final_train_loss"] == reference["summaries"][0]["final_train_loss"]


def test_resume_after_kill_9_is_bit_identical(
    reference: dict, corpus: Path, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from seedscope.suites.registry import Run, Suite
        from seedscope.models.train import TrainConfig, train_run
        suite = Suite(name="tiny", description="", architecture="gpt2",
                      revision_format="checkpoint-{{step}}", tokenizer="local",
                      steps={STEPS!r}, runs=())
        run = Run(name="small-x1", repo_id="test/tiny-small-x1", seed=1, size="small")
        cfg = TrainConfig.smoke(context=16, batch_size=4, eval_windows=4, probe_sequences=2,
                                **{COPIES!r})
        kill_at = int(os.environ.get("KILL_AT", "-1"))
        def on_step(step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        train_run(suite, run, {str(corpus)!r}, {str(tmp_path / "hub")!r}, cfg,
                  progress=False, log_dir={str(tmp_path / "logs")!r}, on_step=on_step)
        """
    )
    env = {**os.environ, "KILL_AT": "12"}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    revisions = set(cached_revisions(tmp_path / "hub", RUNS[0].repo_id))
    assert revisions == {"checkpoint-0", "checkpoint-5", "checkpoint-10"}
    # Restart (in this process: same code path, saves a second interpreter start-up).
    summary = train_run(
        SUITE, RUNS[0], corpus, tmp_path / "hub", CFG, progress=False, log_dir=tmp_path / "logs"
    )
    assert summary["resumed_from"] == 10
    ref = reference["root"] / "hub"
    for step in STEPS:
        assert _safetensors(tmp_path / "hub", RUNS[0], step) == _safetensors(ref, RUNS[0], step)
    resumed = pd.read_parquet(tmp_path / "logs" / "test--tiny-small-x1.loss.parquet")
    full = pd.read_parquet(reference["root"] / "logs" / "test--tiny-small-x1.loss.parquet")
    pd.testing.assert_frame_equal(resumed, full)


def test_snapshots_load_offline_with_the_in_memory_logits(
    reference: dict, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = reference["root"] / "hub"
    data = load_corpus(corpus)
    x = torch.from_numpy(data.eval[:2])
    # Step 0: the in-memory model is the freshly built one.
    fresh = build_model(CFG.sizes["small"], data.vocab_size, data.eos_id, CFG, init_seed=1)
    # Final step: the in-memory model is the one in the resume state.
    state = torch.load(
        reference["root"] / "logs" / "test--tiny-small-x1.state.pt", weights_only=True
    )
    assert state["step"] == 20
    final = build_model(CFG.sizes["small"], data.vocab_size, data.eos_id, CFG, init_seed=1)
    final.load_state_dict(state["model"])
    for step, in_memory in ((0, fresh), (20, final)):
        loaded = GPT2LMHeadModel.from_pretrained(
            RUNS[0].repo_id, revision=f"checkpoint-{step}", cache_dir=cache
        )
        loaded.eval(), in_memory.eval()
        with torch.no_grad():
            np.testing.assert_array_equal(
                loaded(input_ids=x).logits.numpy(), in_memory(input_ids=x).logits.numpy()
            )
    tok = AutoTokenizer.from_pretrained(RUNS[0].repo_id, revision="checkpoint-20", cache_dir=cache)
    assert len(tok) == data.vocab_size and tok.eos_token_id == data.eos_id


def test_init_seed_and_data_seed_decouple(corpus: Path, tmp_path: Path) -> None:
    def train(name: str, **seeds: int) -> Path:
        cfg = TrainConfig.smoke(
            context=16, batch_size=4, eval_windows=4, probe_sequences=2, **seeds
        )
        suite = Suite(**{**SUITE.__dict__, "steps": (0, 5, 10)})
        train_run(
            suite,
            RUNS[0],
            corpus,
            tmp_path / name,
            cfg,
            progress=False,
            log_dir=tmp_path / f"{name}-logs",
        )
        return tmp_path / name

    a = train("a", init_seed=7, data_seed=1)
    b = train("b", init_seed=7, data_seed=2)
    c = train("c", init_seed=8, data_seed=1)
    assert _safetensors(a, RUNS[0], 0) == _safetensors(b, RUNS[0], 0)
    assert _safetensors(a, RUNS[0], 10) != _safetensors(b, RUNS[0], 10)
    assert _safetensors(a, RUNS[0], 0) != _safetensors(c, RUNS[0], 0)
    losses = [
        pd.read_parquet(p.with_name(p.name + "-logs") / "test--tiny-small-x1.loss.parquet")
        for p in (a, c)
    ]
    assert losses[0]["loss"].iloc[0] != losses[1]["loss"].iloc[0]


def test_train_suite_with_two_workers_matches_in_process_runs(
    reference: dict, corpus: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig.smoke(
        context=16, batch_size=4, eval_windows=4, probe_sequences=2, workers=2, **COPIES
    )
    frame = train_suite(
        SUITE, corpus, tmp_path / "hub", cfg, log_dir=tmp_path / "logs", progress=False
    )
    assert list(frame["run"]) == [r.name for r in RUNS]
    for run in RUNS:
        assert _safetensors(tmp_path / "hub", run, 20) == _safetensors(
            reference["root"] / "hub", run, 20
        )
    expected = [s["final_train_loss"] for s in reference["summaries"]]
    np.testing.assert_allclose(frame["final_train_loss"], expected, rtol=0, atol=0)
