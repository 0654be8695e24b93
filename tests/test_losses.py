"""The log-prob engine against an independent naive computation, and its file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from seedscope.core.errors import SeedscopeError
from seedscope.core.io import write_json
from seedscope.logprobs.engine import (
    _chunked_logprobs,
    evaluate_to_file,
    file_sha256,
    load_logprobs,
    load_trajectories,
    token_logprobs,
    topk_dtype,
)

VOCAB, CTX = 61, 24


def _gpt2(seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=CTX, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg).eval()


def _neox(seed: int = 0) -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=CTX, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPTNeoXForCausalLM(cfg).eval()


def _windows(n: int = 7, window: int = CTX, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, window))


def naive_logprobs(model, windows: np.ndarray) -> np.ndarray:
    """The way users write it: one window at a time, full log_softmax over the vocabulary."""
    out = np.full(windows.shape, np.nan, dtype=np.float64)
    with torch.no_grad():
        for w, row in enumerate(windows):
            ids = torch.tensor(row[None], dtype=torch.long)
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            for t in range(1, len(row)):
                out[w, t] = logp[t - 1, row[t]].item()
    return out


@pytest.mark.parametrize("make", [_gpt2, _neox], ids=["gpt2", "gpt-neox"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_engine_matches_naive_loop(make, batch_size):
    model, windows = make(), _windows()
    out = token_logprobs(model, windows, batch_size=batch_size, device="cpu")
    assert out.dtype == np.float32 and out.shape == windows.shape
    assert np.isnan(out[:, 0]).all()
    np.testing.assert_allclose(out[:, 1:], naive_logprobs(model, windows)[:, 1:], atol=2e-5)


def test_log_probs_are_distributions():
    """exp(log-prob) summed over every candidate next token is 1 (checks the off-by-one:
    all candidates for position t share the context windows[:, :t])."""
    model, windows = _gpt2(), _windows(n=1, window=6)
    candidates = np.repeat(windows, VOCAB, axis=0)
    candidates[:, 5] = np.arange(VOCAB)
    out = token_logprobs(model, candidates, batch_size=32, device="cpu")
    assert np.exp(out[:, 5].astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(out[:, 1:5], np.repeat(out[:1, 1:5], VOCAB, axis=0))


def test_chunked_logsumexp_equals_full_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 97, generator=gen) * 4
    targets = torch.randint(0, 97, (50,), generator=gen)
    full = torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None])[:, 0]
    for rows in (1, 7, 50, 1000):
        got, _ = _chunked_logprobs(logits, None, targets, rows)
        np.testing.assert_allclose(got.numpy(), full.numpy(), atol=1e-5)
    # and through the engine: a 1-row logits budget gives the default result
    model, windows = _gpt2(), _windows()
    a = token_logprobs(model, windows, device="cpu", logits_budget_mb=1e-6)
    b = token_logprobs(model, windows, device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-6)


def _count_forward(model) -> list[int]:
    calls = [0]
    model.base_model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    ("bad", "match"),
    [(VOCAB, "outside the model's vocabulary"), (-1, "outside the model's vocabulary")],
)
def test_out_of_vocab_raises_before_evaluation(bad, match):
    model, windows = _gpt2(), _windows()
    windows[4, 9] = bad
    calls = _count_forward(model)
    with pytest.raises(SeedscopeError, match=match) as info:
        token_logprobs(model, windows, source="run small-x21 step 40")
    assert "window 4, position 9" in str(info.value) and "small-x21 step 40" in str(info.value)
    assert calls[0] == 0


def test_too_long_windows_and_bad_input_raise_before_evaluation(tmp_path):
    model = _gpt2()
    calls = _count_forward(model)
    with pytest.raises(SeedscopeError, match=f"longer than the model's context of {CTX}"):
        evaluate_to_file(model, _windows(window=CTX + 1), tmp_path / "x.npy", source="f.npy")
    with pytest.raises(SeedscopeError, match="must be integers"):
        token_logprobs(model, _windows().astype(float))
    with pytest.raises(SeedscopeError, match=r"\[n_windows, window\]"):
        token_logprobs(model, np.arange(5))
    with pytest.raises(SeedscopeError, match="batch_size"):
        token_logprobs(model, _windows(), batch_size=0)
    assert calls[0] == 0
    assert not list(tmp_path.iterdir())


def test_tensor_input_training_flag_and_threads_restored():
    model, windows = _gpt2(), _windows()
    model.train()
    threads = torch.get_num_threads()
    out = token_logprobs(model, torch.as_tensor(windows), device="cpu", threads=1)
    assert model.training and torch.get_num_threads() == threads
    model.eval()
    np.testing.assert_allclose(out[:, 1:], naive_logprobs(model, windows)[:, 1:], atol=2e-5)


def test_streaming_file_equals_in_memory(tmp_path):
    model, windows = _gpt2(), _windows(n=11)
    target = tmp_path / "run" / "step-5.npy"
    digest = evaluate_to_file(model, windows, target, batch_size=4, device="cpu")
    in_memory = token_logprobs(model, windows, batch_size=4, device="cpu")
    np.testing.assert_array_equal(np.load(target), in_memory)
    assert digest == file_sha256(target)
    assert [p.name for p in target.parent.iterdir()] == ["step-5.npy"]  # no temp file left


@pytest.mark.parametrize("budget_mb", [64.0, 0.001])  # one logits chunk; one row per chunk
def test_topk_kept_in_the_same_pass_equal_the_full_softmax(tmp_path, budget_mb):
    model, windows = _gpt2(), _windows(n=7)
    grid, top_path = tmp_path / "step-5.npy", tmp_path / "topk" / "step-5.npy"
    evaluate_to_file(
        model, windows, grid, batch_size=3, device="cpu", logits_budget_mb=budget_mb,
        top_k=4, topk_path=top_path,
    )  # fmt: skip
    top = np.load(top_path)
    assert top.shape == (*windows.shape, 4) and top.dtype == topk_dtype(VOCAB)
    assert top["id"].dtype == np.uint16 and topk_dtype(50_257)["id"] == np.uint16
    assert topk_dtype(2**16 + 1)["id"] == np.uint32
    assert np.isnan(top["logprob"][:, 0]).all()
    # the same log-probs as without top-k (the grid file is unchanged by keeping them)
    np.testing.assert_array_equal(np.load(grid), token_logprobs(model, windows, device="cpu"))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor(windows)).logits.double(), -1)
    logp = logp[:, :-1].numpy()  # row t - 1 predicts position t
    ids, kept = top["id"][:, 1:].astype(np.int64), top["logprob"][:, 1:].astype(np.float64)
    # each stored log-prob is the reference's at the stored id (float16: 3 digits) ...
    np.testing.assert_allclose(kept, np.take_along_axis(logp, ids, -1), rtol=1e-3, atol=1e-4)
    # ... the ids are distinct, most likely first, and no other token beats the k-th
    assert (np.diff(np.sort(ids, -1), axis=-1) > 0).all()
    assert (np.diff(np.take_along_axis(logp, ids, -1), axis=-1) <= 1e-6).all()
    ref = np.sort(logp, -1)[..., ::-1][..., :4]
    np.testing.assert_allclose(np.take_along_axis(logp, ids, -1), ref, atol=1e-6)
    with pytest.raises(SeedscopeError, match="topk_path"):
        evaluate_to_file(model, windows, grid, device="cpu", top_k=4)


def test_readers_trust_only_the_manifest(tmp_path):
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "a" / "traj").mkdir(parents=True)
    np.save(tmp_path / "a" / "step-5.npy", grid)
    with pytest.raises(SeedscopeError, match="No complete full-grid"):
        load_logprobs(tmp_path, ["a"], 5)
    for step in (5, 1):
        np.save(tmp_path / "a" / "traj" / f"step-{step}.npy", grid.reshape(-1)[[1, 6]] + step)
    units = {
        "a/step-5": {"run": "a", "step": 5, "file": "a/step-5.npy", "traj_file": "a/traj/step-5.npy"},
        "a/step-1": {"run": "a", "step": 1, "file": None, "traj_file": "a/traj/step-1.npy"},
    }  # fmt: skip
    write_json(tmp_path / "manifest.json", {"units": units})
    np.testing.assert_array_equal(load_logprobs(tmp_path, ["a"], 5)["a"], grid)
    steps, traj = load_trajectories(tmp_path, "a")
    np.testing.assert_array_equal(steps, [1, 5])
    np.testing.assert_array_equal(traj, [[2.0, 6.0], [7.0, 11.0]])
    with pytest.raises(SeedscopeError, match="No complete full-grid"):
        load_logprobs(tmp_path, ["a"], 1)
