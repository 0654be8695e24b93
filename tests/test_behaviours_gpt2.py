"""English probes with GPT-2's real tokenizer: the summed log-prob measures option length,
the per-token-normalised headline does not (scored by an untrained GPT-2, a 'step 0' model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hubfake import real_gpt2_tokenizer_dir

from seedscope.analyses import behaviours as bh
from seedscope.data.corpus import gpt2_bpe_tokenizer


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    folder = real_gpt2_tokenizer_dir()
    return gpt2_bpe_tokenizer(folder / "vocab.json", folder / "merges.txt")


def test_english_options_are_multi_token_and_of_unequal_length(gpt2_tokenizer):
    """The premise: with GPT-2's BPE, acronym answers are never one token, and options of
    facts / language items often differ in token count."""
    items = bh.english_probes(200, seed=0, behaviours=["acronyms", "facts", "language"])
    lengths = {it: [len(bh.encode(gpt2_tokenizer, o)) for o in it.options] for it in items}
    acronyms = [n for it, n in lengths.items() if it.behaviour == "acronyms"]
    assert all(n[0] > 1 for n in acronyms)
    unequal = [len(set(n)) > 1 for it, n in lengths.items() if it.behaviour != "acronyms"]
    assert np.mean(unequal) > 0.5


def test_summed_scoring_measures_length_at_step_zero_per_token_does_not(gpt2_tokenizer):
    """An untrained model gives every token ~log(1/50257) = -10.8 nats: the summed score
    picks the option with fewest tokens (right on 100% of items whose answer is the
    shortest, 0% where it is the longest); per token, options compare as coin flips."""
    from transformers import GPT2Config, GPT2LMHeadModel

    items = bh.english_probes(40, seed=0, behaviours=["facts", "language"])
    keep = []
    for it in items:
        n = [len(bh.encode(gpt2_tokenizer, o)) for o in it.options]
        if n[0] < min(n[1:]) or n[0] > max(n[1:]):
            keep.append(it)
    assert len(keep) >= 10
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=128)
    model = GPT2LMHeadModel(config).eval()
    scores = bh.score_items(model, gpt2_tokenizer, keep, batch_size=16)
    cmp = bh.scoring_comparison(scores.assign(run="untrained", step=0))
    short = scores[[bool(t[0] < min(t[1:])) for t in scores["option_tokens"]]]
    long = scores[[bool(t[0] > max(t[1:])) for t in scores["option_tokens"]]]
    assert len(short) and len(long)
    assert short["correct_summed"].all() and not long["correct_summed"].any()
    assert short["correct_per_token"].mean() < 0.8
    assert long["correct_per_token"].mean() > 0.05
    assert (cmp["disagree"] > 0).all()
