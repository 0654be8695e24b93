"""The loader on fabricated hub caches: CRFM and Pythia layouts, offline, broken files."""

from __future__ import annotations

import shutil

import hubfake
import numpy as np
import pytest
import torch

from seedscope.core.errors import SeedscopeError
from seedscope.models.checkpoints import (
    cached_steps,
    evict_checkpoint,
    fetch_checkpoint,
    load_checkpoint,
)
from seedscope.models.hubcache import cached_revisions, repo_folder
from seedscope.suites.registry import get_suite

IDS = [5, 17, 40, 3, 99, 120, 7, 7, 64, 250, 31, 2]


def _logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return np.array([logp[t - 1, ids[t]].item() for t in range(1, len(ids))])


def test_hub_layout_is_the_clients(crfm_cache):
    folder = repo_folder(crfm_cache["cache"], "stanford-crfm/alias-gpt2-small-x21")
    refs = cached_revisions(crfm_cache["cache"], "stanford-crfm/alias-gpt2-small-x21")
    assert sorted(refs) == ["checkpoint-0", "checkpoint-10", "checkpoint-400000"]
    snap = folder / "snapshots" / refs["checkpoint-10"]
    assert (snap / "pytorch_model.bin").is_symlink()
    assert (snap / "pytorch_model.bin").resolve().parent == (folder / "blobs").resolve()
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(crfm_cache["cache"])
    repo = next(r for r in info.repos if r.repo_id == "stanford-crfm/alias-gpt2-small-x21")
    assert {ref for rev in repo.revisions for ref in rev.refs} == set(refs)


def test_loaded_crfm_checkpoint_matches_independent_numpy_forward(crfm_cache):
    suite = crfm_cache["suite"]
    model, tok = load_checkpoint(suite, "battlestar", 10, cache_dir=crfm_cache["cache"])
    assert model.config.scale_attn_by_inverse_layer_idx
    assert model.config.reorder_and_upcast_attn
    expected = hubfake.numpy_gpt2_logprobs(crfm_cache["models"][("battlestar", 10)], IDS)
    np.testing.assert_allclose(_logprobs(model, IDS), expected, atol=1e-4)
    assert len(tok) == crfm_cache["vocab"]


def test_crfm_flags_are_honoured(crfm_cache):
    suite = crfm_cache["suite"]
    original = crfm_cache["models"][("alias", 400000)]
    loaded, _ = load_checkpoint(
        suite,
        "stanford-crfm/alias-gpt2-small-x21",
        400000,
        cache_dir=crfm_cache["cache"],
        with_tokenizer=False,
    )
    ids = torch.tensor([IDS])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits)
        flags_off = hubfake.tiny_gpt2(seed=0, vocab_size=crfm_cache["vocab"], crfm_flags=False)
        flags_off.load_state_dict(original.state_dict())
        gap = (flags_off(ids).logits - original(ids).logits).abs().max().item()
    assert gap > 1e-2


def test_uncached_checkpoint_offline_names_repo_revision_and_fix(crfm_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SeedscopeError) as err:
        fetch_checkpoint(crfm_cache["suite"], "alias", 2000, cache_dir=crfm_cache["cache"])
    msg = str(err.value)
    assert "stanford-crfm/alias-gpt2-small-x21" in msg and "checkpoint-2000" in msg
    assert "HF_HUB_CACHE" in msg


def test_step_not_on_schedule_names_nearest(crfm_cache):
    with pytest.raises(SeedscopeError, match=r"nearest: 2000, 2100"):
        load_checkpoint(crfm_cache["suite"], "alias", 2050, cache_dir=crfm_cache["cache"])


def _copy_cache(crfm_cache, tmp_path):
    cache = tmp_path / "hub"
    shutil.copytree(crfm_cache["cache"], cache, symlinks=True)
    refs = cached_revisions(cache, "stanford-crfm/alias-gpt2-small-x21")
    snap = repo_folder(cache, "stanford-crfm/alias-gpt2-small-x21") / "snapshots"
    return cache, snap / refs["checkpoint-10"]


def test_truncated_weights_name_the_file(crfm_cache, tmp_path):
    cache, snap = _copy_cache(crfm_cache, tmp_path)
    blob = (snap / "pytorch_model.bin").resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(SeedscopeError, match=r"pytorch_model\.bin.*corrupt or truncated"):
        load_checkpoint(crfm_cache["suite"], "alias", 10, cache_dir=cache)


def test_config_not_json_names_the_file(crfm_cache, tmp_path):
    cache, snap = _copy_cache(crfm_cache, tmp_path)
    (snap / "config.json").unlink()
    (snap / "config.json").write_text("{not json")
    with pytest.raises(SeedscopeError, match=r"config\.json is not valid JSON"):
        load_checkpoint(crfm_cache["suite"], "alias", 10, cache_dir=cache)


def test_tokenizer_larger_than_model_vocab_is_rejected(crfm_cache, tmp_path):
    cache = tmp_path / "hub"
    root = tmp_path
    tok_files = hubfake.gpt2_tokenizer_files(root / "tok", vocab_size=320)
    model = hubfake.tiny_gpt2(seed=1, vocab_size=200)
    hubfake.write_crfm_checkpoint(
        cache, "stanford-crfm/alias-gpt2-small-x21", 10, model, tok_files, root / "w"
    )
    with pytest.raises(SeedscopeError, match="do not belong together"):
        load_checkpoint(crfm_cache["suite"], "alias", 10, cache_dir=cache)


def test_pythia_layout_loads_and_matches(tmp_path):
    suite = get_suite("pythia-14m")
    cache = tmp_path / "hub"
    model = hubfake.write_pythia_checkpoint(cache, "EleutherAI/pythia-14m", 512, 3, tmp_path)
    loaded, tok = load_checkpoint(suite, "pythia-14m", 512, cache_dir=cache)
    assert loaded.config.model_type == "gpt_neox"
    np.testing.assert_allclose(_logprobs(loaded, IDS[:8]), _logprobs(model, IDS[:8]), atol=1e-5)
    assert tok.decode(tok("alpha beta")["input_ids"]) == "alpha beta"


def test_cached_steps_and_evict(crfm_cache, tmp_path):
    cache, _ = _copy_cache(crfm_cache, tmp_path)
    suite = crfm_cache["suite"]
    assert cached_steps(suite, "alias", cache) == [0, 10, 400000]
    freed = evict_checkpoint(suite, "alias", 10, cache)
    assert freed > 0
    assert cached_steps(suite, "alias", cache) == [0, 400000]
    assert cached_steps(suite, "battlestar", cache) == [0, 10, 400000]
