"""A hub suite's own inputs: GPT-2's real tokenizer from a CRFM-style folder, training logs
from `trainer_state.json`, and analysis steps resolved against the suite's schedule."""

from __future__ import annotations

import json
from pathlib import Path

import hubfake
import numpy as np
import pytest

from seedscope.core.config import SuiteConfig
from seedscope.core.errors import SeedscopeError
from seedscope.core.steps import auto_steps, resolve_steps
from seedscope.data.corpus import CorpusConfig, build_corpus, check_inputs
from seedscope.models.checkpoints import download_command, fetch_trainer_state, loss_history

TEXT_CFG = {"n_train_tokens": 20_000, "n_eval_tokens": 2_048, "window": 64, "vocab_size": 300}


@pytest.fixture(scope="module")
def gpt2_dir() -> Path:
    return hubfake.real_gpt2_tokenizer_dir()


def _crfm_like_folder(folder: Path, gpt2_dir: Path) -> Path:
    """What a CRFM snapshot holds: the tokenizer's two files beside weights and trainer files."""
    folder.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((gpt2_dir / name).read_bytes())
    (folder / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 50257}')
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    (folder / "trainer_state.json").write_text('{"log_history": []}')
    (folder / "optimizer.pt").write_bytes(b"\0" * 4096)
    return folder


def test_real_gpt2_tokenizer_from_vocab_and_merges(gpt2_dir, tmp_path):
    """vocab.json + merges.txt alone load as GPT-2's tokenizer: known ids, EOS 50256,
    and only tokenizer files are copied into the corpus (never weights)."""
    snapshot = _crfm_like_folder(tmp_path / "snapshot", gpt2_dir)
    data = tmp_path / "data"
    data.mkdir()
    text = hubfake.english_text(120_000)
    (data / "docs.txt").write_text(text)
    out = tmp_path / "corpus"
    cfg = CorpusConfig(source="text", text_dir=str(data), tokenizer_dir=str(snapshot), **TEXT_CFG)
    check_inputs(cfg)
    stats = build_corpus(cfg, out)
    assert stats["vocab_size"] == 50257 and stats["eos_id"] == 50256
    copied = sorted(p.name for p in (out / "tokenizer").iterdir())
    assert copied == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    # GPT-2's published ids (e.g. the tiktoken / OpenAI encoder give the same)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" The quick brown fox")["input_ids"] == [383, 2068, 7586, 21831]
    ev = np.load(out / "eval_tokens.npy")
    assert ev.shape == (2_048 // 64, 64) and (ev[:, 0] == 50256).all()
    decoded = tok.decode(ev[0, 1:].tolist())
    assert decoded.split("<|endoftext|>")[0] in text


def test_tokenizer_folder_with_neither_file_is_one_clear_error(tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(hubfake.english_text(60_000))
    cfg = CorpusConfig(source="text", text_dir=str(data), tokenizer_dir=str(folder), **TEXT_CFG)
    with pytest.raises(SeedscopeError) as err:
        check_inputs(cfg)
    msg = str(err.value)
    assert "holds neither tokenizer.json nor vocab.json + merges.txt" in msg
    assert "Fix:" in msg and "hf download" in msg and "\n" not in msg


def test_missing_checkpoint_hint_names_the_hf_cli():
    command = download_command("stanford-crfm/alias-gpt2-small-x21", "checkpoint-10")
    assert command.startswith("hf download stanford-crfm/alias-gpt2-small-x21 ")
    assert "--revision checkpoint-10" in command and "huggingface-cli" not in command
    # the weights and tokenizer, never optimizer states
    assert "--include 'pytorch_model*.bin'" in command and "optimizer" not in command


def test_trainer_state_log_history(tmp_path, crfm_cache):
    suite = crfm_cache["suite"]
    history = [
        {"step": 5, "loss": 9.5, "learning_rate": 1e-4},
        {"step": 10, "loss": 8.25},
        {"step": 10, "eval_loss": 8.9},
        {"step": 15, "loss": "not a number"},
    ]
    cache = tmp_path / "hub"
    tok = hubfake.gpt2_tokenizer_files(tmp_path / "tok")
    model = hubfake.tiny_gpt2(seed=0, vocab_size=crfm_cache["vocab"])
    repo = suite.run("alias").repo_id
    hubfake.write_crfm_checkpoint(cache, repo, 10, model, tok, tmp_path / "w", log_history=history)
    state = fetch_trainer_state(suite, "alias", 10, cache_dir=cache)
    assert loss_history(state) == [{"step": 5, "loss": 9.5}, {"step": 10, "loss": 8.25}]
    # no such file in the repo (Pythia's layout) or not cached offline: no log, no error
    assert fetch_trainer_state(suite, "battlestar", 10, cache_dir=cache) is None
    assert loss_history(None) == [] and loss_history({"global_step": 3}) == []


def test_auto_steps_spread_the_suites_own_schedule():
    crfm = SuiteConfig(name="stanford-crfm-gpt2").resolve()
    steps = resolve_steps(crfm, "auto")
    assert len(steps) == 24 and all(s in crfm.suite.steps for s in steps)
    assert {0, crfm.mid_step, 400000} <= set(steps)
    # evenly spread on the log-step axis: no decade of the schedule is left out
    decades = {int(np.log10(s)) for s in steps if s > 0}
    assert decades == {1, 2, 3, 4, 5}
    pythia = SuiteConfig(name="polypythia-160m").resolve()
    assert all(s in pythia.suite.steps for s in resolve_steps(pythia, "auto"))
    # a schedule of at most 24 steps is taken whole
    smoke = SuiteConfig(name="mini-smoke").resolve()
    assert resolve_steps(smoke, "auto") == list(smoke.suite.steps)
    # 'auto' stops at the resolved final step
    early = SuiteConfig(name="stanford-crfm-gpt2", final_step=2000, mid_step=1000).resolve()
    assert max(resolve_steps(early, "auto")) == 2000


def test_named_steps_resolve_per_suite():
    crfm = SuiteConfig(name="stanford-crfm-gpt2").resolve()
    assert resolve_steps(crfm, ["first", "mid", "final"]) == [0, crfm.mid_step, 400000]
    pythia = SuiteConfig(name="polypythia-160m").resolve()
    assert resolve_steps(pythia, ["first", "mid", "final"]) == [0, pythia.mid_step, 143000]
    with pytest.raises(SeedscopeError, match="not on the checkpoint schedule"):
        resolve_steps(crfm, [0, 160, 240, "final"])  # the mini-suite's steps do not fit CRFM


def test_auto_steps_is_a_spread_not_a_prefix():
    steps = auto_steps(range(0, 100_001, 100), final=100_000, mid=50_000, n=10)
    assert len(steps) <= 10 and steps[0] == 0 and steps[-1] == 100_000
    gaps = np.diff(np.log10([s for s in steps if s > 0]))
    assert gaps.max() < 1.0  # no gap of a decade or more
    assert json.dumps(steps) == json.dumps(sorted(set(steps)))


def test_outlier_topk_reads_the_sweep_and_loads_no_weights(monkeypatch, tmp_path) -> None:
    """The outlier tables' top-k guesses come from the sweep's full units (kept in the same
    forward pass as the log-probs): no checkpoint is loaded or fetched after the sweep."""
    from types import SimpleNamespace

    import torch

    from seedscope.core.errors import SeedscopeError
    from seedscope.logprobs.sweep import RandomGPT2Loader, SweepConfig, Unit, run_sweep
    from seedscope.models import checkpoints
    from seedscope.stages import agreement
    from seedscope.suites.registry import get_suite

    def no_weights(*args, **kwargs):
        raise AssertionError("the outlier tables loaded weights")

    for name in ("load_checkpoint", "ensure_checkpoint", "cached_steps"):
        if hasattr(checkpoints, name):
            monkeypatch.setattr(checkpoints, name, no_weights)
    loader = RandomGPT2Loader(vocab_size=50, n_positions=16)
    windows = np.random.default_rng(0).integers(0, 50, size=(3, 16))
    cfg = SweepConfig(steps=("final",), device="cpu", threads=1, trajectory_tokens=0, top_k=4)
    runs = ["small-x21", "small-x49"]
    run_sweep(get_suite("mini-smoke"), windows, tmp_path, cfg, loader=loader, runs=runs,
              progress=False)  # fmt: skip
    monkeypatch.setattr(agreement, "token_losses_root", lambda resolved: tmp_path)
    resolved = SimpleNamespace(run_names=runs)
    agreement.check_topk(resolved, 60, 4, "loss_correlation")
    topk = agreement.topk_lookup(resolved, 60, 3, lambda ids: f"<{ids[0]}>")
    with torch.no_grad():
        logits = loader(Unit(runs[1], 60, "", ""))(torch.tensor(windows[1:2])).logits[0, 4]
    probs = torch.softmax(logits.double(), -1).numpy()
    got = topk(runs[1], 1, 5)  # the guesses for position 5: P(. | tokens[:5])
    assert [g[0] for g in got] == [f"<{i}>" for i in np.argsort(-probs)[:3]]
    np.testing.assert_allclose([g[1] for g in got], np.sort(probs)[::-1][:3], rtol=2e-3)
    with pytest.raises(SeedscopeError, match=r"set token_losses.top_k >= 6"):
        agreement.check_topk(resolved, 60, 6, "loss_correlation")
