"""Behaviour battery: probe generators against their ground truth, the scorer against hand
computations and an independent per-option loop, emergence detection on known curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from seedscope.analyses import behaviours as bh
from seedscope.core.errors import SeedscopeError

# A small hand-written ground truth following the corpus schema.
GT = {
    "languages": {
        "mero": {
            "lexicon": ["ka", "mo", "lu", "bira", "tamo", "sunu", "pelo", "dako", "nimu", "rofa"],
            "letters": "abdfiklmnoprstu",
            "word_classes": {
                "det": ["ka", "mo"],
                "prep": ["lu"],
                "conj": ["lu"],
                "noun": ["bira", "tamo", "sunu"],
                "verb": ["pelo", "dako"],
                "adj": ["nimu", "rofa"],
            },
        },
        "velsk": {
            "lexicon": ["sé", "cá", "dúlé", "hórá", "ví", "lós"],
            "letters": "cdhlnrsváéíóú",
        },
    },
    "default_language": "mero",
    "sentence_end": [".", "!", "?"],
    "brackets": [["(", ")"], ["[", "]"], ["{", "}"]],
    "tlds": ["com", "org", "net"],
    "email_domains": ["tamoka", "birano"],
    "acronyms": [
        {"name": "Bira Tamo Sunu", "acronym": "BTS"},
        {"name": "Pelo Dako", "acronym": "PD"},
    ],
    "phrases": [
        {"id": 0, "text": "Bira tamo sunu pelo dako", "train_count": 0},
        {"id": 1, "text": "Tamo pelo nimu rofa bira", "train_count": 10},
        {"id": 2, "text": "Sunu dako bira tamo nimu", "train_count": 1000},
    ],
    "facts": [
        {
            "entity": "Kobaria",
            "relation": "capital",
            "attribute": "Namelu",
            "phrasings_train": [
                "The capital of {entity} is {attribute}.",
                "{attribute} rules {entity}.",
            ],
            "phrasings_heldout": ["{entity}'s capital is {attribute}."],
        },
        {
            "entity": "Tulia",
            "relation": "capital",
            "attribute": "Sorapi",
            "phrasings_train": ["The capital of {entity} is {attribute}."],
            "phrasings_heldout": ["{entity}'s capital is {attribute}."],
        },
    ],
}


def char_tokenizer(texts: list[str]) -> Tokenizer:
    """A word-piece-free tokenizer: one token per character (spaces included)."""
    chars = sorted({c for t in texts for c in t})
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return tok


# --------------------------------------------------------------------------- probe generators


def test_unknown_behaviour_raises_listing_valid_names():
    with pytest.raises(SeedscopeError, match="punctuation.*facts"):
        bh.check_behaviours(["brakets"])
    with pytest.raises(SeedscopeError, match="Did you mean 'brackets'"):
        bh.planted_probes(GT, 3, 0, behaviours=["brakets"])
    with pytest.raises(SeedscopeError, match="Unknown probe source"):
        bh.probes_for("klingon", 3, 0)


@pytest.mark.parametrize("source", ["planted", "english"])
def test_answer_never_among_alternatives_and_all_behaviours_present(source):
    items = bh.probes_for(source, 30, seed=1, ground_truth=GT)
    assert {it.behaviour for it in items} == set(bh.BEHAVIOURS)
    for it in items:
        assert it.alternatives, it
        assert it.correct not in it.alternatives
        assert len(set(it.alternatives)) == len(it.alternatives)
    counts = pd.Series([it.behaviour for it in items]).value_counts()
    assert counts.max() <= 30


@pytest.mark.parametrize("source", ["planted", "english"])
def test_brackets_balanced_except_the_one_to_close(source):
    pairs = GT["brackets"]
    items = bh.probes_for(source, 40, seed=2, ground_truth=GT, behaviours="brackets")
    depths = set()
    for it in items:
        stack = bh.bracket_depth(it.prompt, pairs)
        assert stack is not None, it.prompt  # no close mismatches its open
        depth = int(it.group.removeprefix("depth"))
        assert len(stack) == depth
        assert stack[-1] == it.correct
        # closing with the answer leaves one fewer open bracket; a wrong close mismatches
        assert bh.bracket_depth(it.prompt + it.correct, pairs) == stack[:-1]
        for alt in it.alternatives:
            assert bh.bracket_depth(it.prompt + alt, pairs) is None
        depths.add(depth)
    assert depths == {1, 2, 3, 4}


@pytest.mark.parametrize("source", ["planted", "english"])
def test_emails_well_formed(source):
    items = bh.probes_for(source, 20, seed=3, ground_truth=GT, behaviours="email")
    groups = {it.group for it in items}
    assert groups == {"at", "tld"}
    tlds = (
        set(GT["tlds"])
        if source == "planted"
        else set(bh.load_probe_data("templates")["email"]["tlds"])
    )
    for it in items:
        last = (it.prompt + it.correct).split()[-1]
        if it.group == "tld":
            assert bh.EMAIL_RE.match(last), last
            assert it.correct in tlds
            assert not set(it.alternatives) & tlds
            if source == "planted":
                assert last.split("@")[1].split(".")[0] in GT["email_domains"]
        else:
            assert it.correct == "@"
            assert bh.EMAIL_RE.match(last + "dom.com"), last


def test_planted_phrases_and_facts_match_ground_truth():
    items = bh.planted_probes(GT, 50, seed=4, behaviours=["memorised", "facts"])
    phrases = {p["text"]: p["train_count"] for p in GT["phrases"]}
    mem = [it for it in items if it.behaviour == "memorised"]
    assert len(mem) == 3
    for it in mem:
        text = it.prompt + it.correct
        assert text in phrases
        assert it.group == bh.freq_bucket(phrases[text])
    assert {it.group for it in mem} == {"0", "1e1", "1e3"}
    facts = [it for it in items if it.behaviour == "facts"]
    # usable phrasings: entity before attribute ("{attribute} rules {entity}" is skipped)
    assert len(facts) == 4
    for it in facts:
        entity = it.meta["entity"]
        truth = next(f for f in GT["facts"] if f["entity"] == entity)
        assert it.correct == " " + truth["attribute"]
        assert entity in it.prompt
        expect = "heldout" if it.meta["template"] in truth["phrasings_heldout"] else "seen"
        assert it.group == expect
    assert sorted(it.group for it in facts) == ["heldout", "heldout", "seen", "seen"]
    assert {it.prompt for it in facts if it.group == "heldout"} == {
        "Kobaria's capital is",
        "Tulia's capital is",
    }


def test_planted_acronyms_language_induction():
    items = bh.planted_probes(GT, 50, seed=5, behaviours=["acronyms", "language", "induction"])
    acr = [it for it in items if it.behaviour == "acronyms"]
    assert len(acr) == 5  # one item per letter: BTS (3) + PD (2)
    for it in acr:
        truth = next(a for a in GT["acronyms"] if it.prompt == a["name"] + " (")
        assert it.correct == truth["acronym"] + ")"
        k = int(it.group.removeprefix("letter")) - 1
        for alt in it.alternatives:  # only letter k differs
            diff = [i for i, (x, y) in enumerate(zip(alt, it.correct, strict=True)) if x != y]
            assert diff == [k]
    lex = {k: set(v["lexicon"]) for k, v in GT["languages"].items()}
    for it in (it for it in items if it.behaviour == "language"):
        assert it.language == it.group
        assert it.correct.strip() in lex[it.language]
        assert all(w.strip().lower() in lex[it.language] for w in it.prompt.split())
        assert not any(a.strip() in lex[it.language] for a in it.alternatives)
    for it in (it for it in items if it.behaviour == "induction"):
        first = it.first_copy.split()
        rest = it.prompt[len(it.first_copy) :].split()
        assert it.prompt.startswith(it.first_copy + " ")
        assert rest == first[: len(rest)]
        assert it.correct == " " + first[len(rest)]


def test_english_probes_data_and_determinism():
    a = bh.english_probes(25, seed=7)
    b = bh.english_probes(25, seed=7)
    assert a == b
    assert a != bh.english_probes(25, seed=8)
    # a subset of behaviours gives the same items for those behaviours
    sub = bh.english_probes(25, seed=7, behaviours=["facts"])
    assert sub == [it for it in a if it.behaviour == "facts"]
    capitals = dict(map(tuple, bh.load_probe_data("facts")["facts"]))
    for it in sub:
        assert it.correct == " " + capitals[it.meta["entity"]]
    assert len(bh.load_probe_data("facts")["facts"]) >= 100
    langs = {it.group for it in bh.english_probes(200, 0, "language")}
    assert langs == {"english", "french", "german", "spanish"}


# --------------------------------------------------------------------------- scorer


class FixedLogits(torch.nn.Module):
    """Next-token logits depend only on the current token: logits[t] = table[ids[t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        return (self.table[input_ids],)


def test_scorer_matches_hand_computation():
    tok = char_tokenizer(["ab.!xyz"])
    vocab = tok.get_vocab()
    v = len(vocab)
    table = torch.zeros(v, v)
    # after "b": "." has logit 2, "!" logit 1, everything else 0
    table[vocab["b"], vocab["."]] = 2.0
    table[vocab["b"], vocab["!"]] = 1.0
    # after "x": "y" logit 3
    table[vocab["x"], vocab["y"]] = 3.0
    model = FixedLogits(table)
    items = [
        bh.ProbeItem("punctuation", "ab", ".", ("!", "z")),
        bh.ProbeItem("punctuation", "ab", "!", (".",)),
        bh.ProbeItem("memorised", "a", "bxy", ("bxz",)),
    ]
    out = bh.score_items(model, tok, items, batch_size=2, scoring="summed")
    z = math.log(math.exp(2) + math.exp(1) + (v - 2))
    assert out.loc[0, "logp_correct"] == pytest.approx(2 - z, abs=1e-5)
    assert out.loc[0, "logp_best_wrong"] == pytest.approx(1 - z, abs=1e-5)
    assert out.loc[0, "margin"] == pytest.approx(1.0, abs=1e-5)
    assert bool(out.loc[0, "correct"]) is True
    assert out.loc[1, "margin"] == pytest.approx(-1.0, abs=1e-5)
    assert bool(out.loc[1, "correct"]) is False
    # multi-token: log p(b|a) + log p(x|b) + log p(y|x) vs ... + log p(z|x)
    zx = math.log(math.exp(3) + (v - 1))
    lp_b_a, lp_x_b = -math.log(v), -z
    assert out.loc[2, "logp_correct"] == pytest.approx(lp_b_a + lp_x_b + 3 - zx, abs=1e-5)
    assert out.loc[2, "margin"] == pytest.approx(3.0, abs=1e-5)
    assert out.loc[2, "n_option_tokens"] == 3
    # per token: the same sums over 3 tokens
    assert out.loc[2, "margin_per_token"] == pytest.approx(1.0, abs=1e-5)
    assert out.loc[2, "logp_options_per_token"][0] == pytest.approx(
        (lp_b_a + lp_x_b + 3 - zx) / 3, abs=1e-5
    )
    # chance: 1/3 with three options, 1/2 with two; score = (correct - chance)/(1 - chance)
    assert out["chance"].tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert out["score"].tolist() == pytest.approx([1.0, -1.0, 1.0])
    summ = bh.summarise(out, n_boot=200, seed=0)
    acc = summ.query("behaviour == 'punctuation' and group == 'all' and metric == 'accuracy'")
    assert acc["value"].item() == pytest.approx(0.5)
    assert acc["n"].item() == 2
    assert acc["ci_low"].item() <= 0.5 <= acc["ci_high"].item()


def tiny_gpt2(vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    gen = torch.Generator().manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def test_batched_scoring_matches_slow_per_option_loop():
    items = bh.planted_probes(GT, 1, seed=9)
    tok = char_tokenizer([it.prompt + o for it in items for o in it.options])
    model = tiny_gpt2(tok.get_vocab_size())
    out = bh.score_items(model, tok, items, batch_size=5, scoring="summed")
    for i, it in enumerate(items):
        p = tok.encode(it.prompt).ids
        slow = []
        for opt in it.options:
            o = tok.encode(opt).ids
            with torch.no_grad():
                logits = model(torch.tensor([p + o])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            slow.append(sum(float(lp[len(p) - 1 + t, o[t]]) for t in range(len(o))))
        np.testing.assert_allclose(out.loc[i, "logp_options"], slow, rtol=1e-5, atol=1e-5)
        assert out.loc[i, "margin"] == pytest.approx(slow[0] - max(slow[1:]), abs=1e-5)
        assert bool(out.loc[i, "correct"]) == (slow[0] > max(slow[1:]))
        lengths = [len(tok.encode(o).ids) for o in it.options]
        per_tok = [lp / n for lp, n in zip(slow, lengths, strict=True)]
        assert out.loc[i, "option_tokens"] == lengths
        np.testing.assert_allclose(out.loc[i, "logp_options_per_token"], per_tok, atol=1e-5)
        assert bool(out.loc[i, "correct_per_token"]) == (per_tok[0] > max(per_tok[1:]))


def test_language_mass_and_induction_losses():
    texts = [" ".join(v["lexicon"]) for v in GT["languages"].values()]
    tok = char_tokenizer(texts + ["KMBTSPDLV"])
    lexicons = {k: v["lexicon"] for k, v in GT["languages"].items()}
    letters = {k: v["letters"] for k, v in GT["languages"].items()}
    lmap = bh.language_token_map(tok, lexicons, letters)
    vocab = tok.get_vocab()
    # "á" only in velsk; "b" only in mero's letters; "s" in both letter sets
    assert vocab["á"] in lmap["velsk"] and vocab["á"] not in lmap["mero"]
    assert vocab["b"] in lmap["mero"]
    assert vocab["s"] not in lmap["mero"] and vocab["s"] not in lmap["velsk"]
    model = tiny_gpt2(tok.get_vocab_size())
    items = bh.planted_probes(GT, 2, seed=1, behaviours=["language", "induction"])
    out = bh.score_items(model, tok, items, language_map=lmap)
    for i, it in enumerate(items):
        ids = tok.encode(it.prompt).ids + tok.encode(it.correct).ids
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        n_p = len(tok.encode(it.prompt).ids)
        if it.behaviour == "language":
            probs = lp[n_p - 1].exp()
            own = float(probs[torch.as_tensor(lmap[it.language])].sum())
            total = sum(float(probs[torch.as_tensor(v)].sum()) for v in lmap.values())
            assert out.loc[i, "lang_mass"] == pytest.approx(own, abs=1e-6)
            assert out.loc[i, "lang_share"] == pytest.approx(own / total, abs=1e-6)
        else:
            nf = len(tok.encode(it.first_copy).ids)
            tok_lp = [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]
            first = -np.mean(tok_lp[: nf - 1])
            second = -np.mean(tok_lp[nf:])
            assert out.loc[i, "first_copy_loss"] == pytest.approx(first, abs=1e-5)
            assert out.loc[i, "second_copy_loss"] == pytest.approx(second, abs=1e-5)
            assert out.loc[i, "induction_gain"] == pytest.approx(first - second, abs=1e-5)
    summ = bh.summarise(out, n_boot=100)
    assert set(summ.query("behaviour == 'induction'")["metric"]) == {
        "score",
        "accuracy",
        "accuracy_summed",
        "accuracy_per_token",
        "accuracy_pmi",
        "margin",
        "induction_gain",
        "first_copy_loss",
        "second_copy_loss",
    }


# --------------------------------------------------------------------------- summed vs per token


def test_summed_and_per_token_scoring_disagree_on_a_hand_built_item():
    """Correct option ' xy' (3 characters = tokens: -0.3, -1.0, -0.1 nats) vs wrong ' z'
    (-0.3, -0.9): summed prefers the short wrong option (-1.4 < -1.2), per token the right
    one (-0.467 > -0.6). The log-probs are set exactly through a fixed logit table."""
    tok = char_tokenizer(["ab xyz"])
    vocab = tok.get_vocab()
    v = len(vocab)

    def row(target_logp: dict[str, float]) -> torch.Tensor:
        # logits giving exactly these log-probs; the rest share the remaining mass
        logits = torch.full((v,), 0.0)
        rest = 1 - sum(math.exp(x) for x in target_logp.values())
        others = v - len(target_logp)
        for ch, lp in target_logp.items():
            logits[vocab[ch]] = lp - math.log(rest / others)
        return logits

    table = torch.zeros(v, v)
    table[vocab["b"]] = row({" ": -0.3})  # after the prompt: the space, shared by both options
    table[vocab[" "]] = row({"x": -1.0, "z": -0.9})
    table[vocab["x"]] = row({"y": -0.1})
    model = FixedLogits(table)
    item = bh.ProbeItem("memorised", "ab", " xy", (" z",))
    per_token = bh.score_items(model, tok, [item], scoring="per_token")
    summed = bh.score_items(model, tok, [item], scoring="summed")
    assert per_token.loc[0, "logp_options"] == pytest.approx([-1.4, -1.2], abs=1e-5)
    assert per_token.loc[0, "option_tokens"] == [3, 2]
    assert per_token.loc[0, "logp_options_per_token"] == pytest.approx([-1.4 / 3, -0.6], abs=1e-5)
    assert bool(per_token.loc[0, "correct"]) is True
    assert bool(summed.loc[0, "correct"]) is False
    # both scorings are in both frames; only the headline columns differ
    for frame in (per_token, summed):
        assert bool(frame.loc[0, "correct_per_token"]) is True
        assert bool(frame.loc[0, "correct_summed"]) is False
    assert per_token.loc[0, "margin"] == pytest.approx(0.6 - 1.4 / 3, abs=1e-5)
    assert summed.loc[0, "margin"] == pytest.approx(-0.2, abs=1e-5)
    # with an equal-length item (' z' -0.9 vs ' x' -1.0 after the space) both are right
    both = bh.score_items(model, tok, [item, bh.ProbeItem("memorised", "ab", " z", (" x",))])
    assert both["correct_summed"].tolist() == [False, True]
    assert both["correct_per_token"].tolist() == [True, True]
    cmp = bh.scoring_comparison(both.assign(run="r", step=0))
    assert cmp.loc[0, "disagree"] == 0.5
    assert cmp.loc[0, "n_equal_lengths"] == 1 and cmp.loc[0, "accuracy_equal_lengths"] == 1.0
    assert cmp.loc[0, "accuracy_summed_longest"] == 0.0
    assert cmp.loc[0, "accuracy_per_token_longest"] == 1.0
    assert np.isnan(cmp.loc[0, "accuracy_summed_shortest"])
    text = bh.scoring_sentence(cmp, "per_token")
    assert "per-token-normalised" in text and "disagree on 50%" in text


def test_pmi_scoring_is_right_where_summed_and_per_token_are_both_fooled():
    """Surface-form competition (Holtzman et al. 2021) on a hand-built bigram model: prompt
    'ab', correct 'xy' vs wrong 'z'. 'z' is frequent everywhere (-0.5 nats after the
    prompt, -0.2 after the neutral prompt 'n'); 'x' is rare (-5) but the prompt raises it to
    -2, and 'y' follows 'x' at -0.5 in any context. Summed: -2.5 < -0.5 (wrong); per token:
    -1.25 < -0.5 (wrong); PMI: (-2.5) - (-5.5) = +3 > -0.5 - (-0.2) = -0.3 (right)."""
    tok = char_tokenizer(["abnxyz"])
    vocab = tok.get_vocab()
    v = len(vocab)

    def row(target_logp: dict[str, float]) -> torch.Tensor:
        logits = torch.full((v,), 0.0)
        rest = 1 - sum(math.exp(x) for x in target_logp.values())
        others = v - len(target_logp)
        for ch, lp in target_logp.items():
            logits[vocab[ch]] = lp - math.log(rest / others)
        return logits

    table = torch.zeros(v, v)
    table[vocab["b"]] = row({"x": -2.0, "z": -0.5})  # after the prompt
    table[vocab["n"]] = row({"x": -5.0, "z": -0.2})  # after the neutral prompt
    table[vocab["x"]] = row({"y": -0.5})
    model = FixedLogits(table)
    item = bh.ProbeItem("memorised", "ab", "xy", ("z",))
    out = bh.score_items(model, tok, [item], scoring="pmi", neutral_prompt="n")
    assert out.loc[0, "logp_options"] == pytest.approx([-2.5, -0.5], abs=1e-5)
    assert out.loc[0, "logp_options_neutral"] == pytest.approx([-5.5, -0.2], abs=1e-5)
    assert out.loc[0, "logp_options_pmi"] == pytest.approx([3.0, -0.3], abs=1e-5)
    assert not out.loc[0, "correct_summed"] and not out.loc[0, "correct_per_token"]
    assert out.loc[0, "correct_pmi"] and out.loc[0, "correct"]
    assert out.loc[0, "margin"] == pytest.approx(3.3, abs=1e-5)
    # the same model with the prompt adding nothing (prompt ends like the neutral one):
    # PMI is 0 for both options, a tie, so no option wins (not a spurious 'right')
    tied = bh.score_items(model, tok, [bh.ProbeItem("memorised", "an", "xy", ("z",))],
                          scoring="pmi", neutral_prompt="n")  # fmt: skip
    assert tied.loc[0, "logp_options_pmi"] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert not tied.loc[0, "correct_pmi"]
    with pytest.raises(SeedscopeError, match="neutral prompt"):
        bh.score_items(model, tok, [item], neutral_prompt="")


def test_scoring_sentence_states_the_headline_length_bias():
    """Planted: per-token right on all 4 items whose correct option is the longest and on 1
    of 4 where it is the shortest (+75 points toward long); PMI 3/4 on both (no gap)."""
    frame = pd.DataFrame(
        {
            "behaviour": "facts",
            "step": 60,
            "option_tokens": [[3, 1]] * 4 + [[1, 3]] * 4,
            "correct_summed": [False] * 4 + [True] * 4,
            "correct_per_token": [True] * 4 + [True, False, False, False],
            "correct_pmi": [True, True, True, False] * 2,
        }
    )
    cmp = bh.scoring_comparison(frame)
    text = bh.scoring_sentence(cmp, "per_token")
    assert (
        "the headline (per_token) scoring is right 75 percentage points more often when the "
        "correct option is the longest" in text
    )
    assert "the smallest such gap is pmi's (+0 points)" in text
    assert "longest" in bh.scoring_sentence(cmp.assign(step=0), "summed")
    text = bh.scoring_sentence(cmp, "summed")
    assert "right 100 percentage points more often when the correct option is the shortest" in text


def test_english_items_share_clusters_by_entity_and_acronym():
    items = bh.english_probes(400, seed=0, behaviours=["facts", "acronyms", "language"])
    for behaviour, prefix in (("facts", "entity:"), ("acronyms", "acronym:")):
        sub = [it for it in items if it.behaviour == behaviour]
        clusters = [it.cluster for it in sub]
        assert all(c is not None and c.startswith(prefix) for c in clusters)
        assert len(set(clusters)) < len(clusters)  # several items per entity / acronym
    facts = [it for it in items if it.behaviour == "facts"]
    for it in facts:
        assert it.cluster == f"entity:{it.meta['entity']}"


# --------------------------------------------------------------------------- emergence


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.1, 0.6, 0.7, 0.9], 20),  # clean crossing at step 20
        ([0.0, 0.6, 0.2, 0.7, 0.8], 30),  # noisy: above at 10, dips at 20, stays from 30
        ([0.6, 0.7, 0.8, 0.9, 0.95], 0),  # above from the start
        ([0.0, 0.6, 0.7, 0.8, 0.3], None),  # falls back below at the end
        ([0.1, 0.2, 0.3, 0.4, 0.45], None),  # never crosses
        ([0.1, 0.5, 0.2, 0.5, 0.5], 30),  # equal to the threshold counts as reached
    ],
)
def test_emergence_step_known_crossings(values, expected):
    assert bh.emergence_step([0, 10, 20, 30, 40], values, 0.5) == expected


def test_emergence_step_unsorted_and_nan():
    steps = [40, 0, 30, 10, 20]
    vals = [0.9, 0.0, 0.8, 0.7, np.nan]  # NaN at 20 skipped: above from 10
    assert bh.emergence_step(steps, vals, 0.5) == 10


def item_frames(
    p_correct: dict[int, float],
    runs: list[str],
    n_items: int,
    seed: int,
    n_options: int = 4,
    behaviour: str = "brackets",
    cluster_size: int = 1,
    twins: bool = False,
) -> pd.DataFrame:
    """Item-level scores like `score_items` gives, drawn at random: at step s each item is
    right with probability p_correct[s] (the same items in every run; twins=True gives every
    run the first run's draws)."""
    rng = np.random.default_rng(seed)
    chance = 1 / n_options
    frames = []
    draws = {}
    for run in runs:
        for step, p in p_correct.items():
            if twins and step in draws:
                correct = draws[step]
            else:
                correct = rng.random(n_items) < p
                draws.setdefault(step, correct)
            frames.append(
                pd.DataFrame(
                    {
                        "run": run,
                        "step": step,
                        "item": np.arange(n_items),
                        "behaviour": behaviour,
                        "group": "all",
                        "cluster": [f"c{i // cluster_size}" for i in range(n_items)],
                        "correct": correct,
                        "chance": chance,
                        "score": (correct - chance) / (1 - chance),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_chance_normalised_score_is_one_criterion_across_option_counts():
    """Accuracy 0.75 is half-way from chance with 2 options but two thirds of the way with
    4: one threshold of 0.6 on the normalised score passes the 4-option behaviour only."""
    steps = {0: 0.75, 10: 0.75}
    two = item_frames(steps, ["r"], 400, 0, n_options=2, behaviour="capitalisation")
    four = item_frames(steps, ["r"], 400, 0, n_options=4, behaviour="brackets")
    frames = pd.concat([two, four], ignore_index=True)
    frames["correct"] = np.tile(np.arange(400) % 4 != 0, 4)  # exactly 75% right
    frames["score"] = (frames["correct"] - frames["chance"]) / (1 - frames["chance"])
    table = bh.behaviour_table(frames, n_boot=0)
    score = table.query("metric == 'score' and step == 10").set_index("behaviour")["value"]
    assert score["capitalisation"] == pytest.approx(0.5)
    assert score["brackets"] == pytest.approx(2 / 3)
    acc = table.query("metric == 'accuracy' and step == 10").set_index("behaviour")["value"]
    assert acc["capitalisation"] == pytest.approx(0.75) == acc["brackets"]
    table["ci_low"] = table["value"]  # no uncertainty: the point estimate decides
    em = bh.emergence_table(table, 0.6).set_index("behaviour")
    assert em.loc["brackets", "emergence_step"] == 0
    assert np.isnan(em.loc["capitalisation", "emergence_step"])


def test_emergence_needs_the_ci_lower_bound_to_stay_above():
    """A planted curve: chance until step 30, a dip back to chance at 50, 0.95 from 60 on;
    emergence (CI lower bound of the score >= 0.6, staying) is 60. A run of 12 items at a
    true score of 0.6 has point estimates above 0.6 by noise but a wide CI: no emergence."""
    steps = [0, 10, 20, 30, 40, 50, 60, 70, 80]
    p = {s: 0.25 if s < 30 or s == 50 else 0.95 for s in steps}
    planted = item_frames(p, ["planted"], 200, 0)
    noisy = item_frames({s: 0.7 for s in steps}, ["noisy"], 12, 1)
    table = bh.behaviour_table(pd.concat([planted, noisy]), n_boot=400, seed=0)
    em = bh.emergence_table(table, 0.6).set_index("run")
    assert em.loc["planted", "emergence_step"] == 60
    assert em.loc["planted", "emerged"]
    assert np.isnan(em.loc["noisy", "emergence_step"]) and not em.loc["noisy", "emerged"]
    assert em.loc["noisy", "last_step"] == 80
    noisy_scores = table.query("run == 'noisy' and metric == 'score'")
    assert (noisy_scores["value"] >= 0.6).any()  # the point estimate does cross by noise
    assert (noisy_scores["ci_low"] < 0.6).all()


def test_ci_emergence_is_not_early_on_noisy_curves_but_the_point_rule_is():
    """Monte Carlo on noisy curves whose point estimates cross and dip by chance: truth at a score of 0.55 (below 0.6) until step
    40, then 0.9. Over 100 simulated runs of 40 items, the CI rule declares emergence before
    step 40 in at most 5%; the point-estimate rule does so far more often."""
    steps = np.array([0, 10, 20, 30, 40, 50, 60, 70])
    true_acc = np.where(steps < 40, 0.25 + 0.75 * 0.55, 0.25 + 0.75 * 0.9)
    rng = np.random.default_rng(5)
    early_ci = early_point = found_ci = 0
    n_sims, n_items = 100, 40
    for _ in range(n_sims):
        lows, points = [], []
        for p in true_acc:
            correct = rng.random(n_items) < p
            score = (correct - 0.25) / 0.75
            res = bh.cluster_bootstrap_mean(score, np.arange(n_items), n_boot=300, seed=0)
            lows.append(float(res.low))
            points.append(float(res.estimate))
        ci_step = bh.emergence_step(steps, lows, 0.6)
        point_step = bh.emergence_step(steps, points, 0.6)
        early_ci += ci_step is not None and ci_step < 40
        early_point += point_step is not None and point_step < 40
        found_ci += ci_step is not None
    assert early_ci / n_sims <= 0.05
    assert early_point / n_sims >= 0.2
    assert found_ci / n_sims >= 0.6  # the real emergence is still found in most runs


def test_cluster_bootstrap_resamples_clusters_not_items():
    """Each item repeated 4 times in one cluster: the cluster CI equals the CI of the unique
    items (the copies add no information); treating copies as independent narrows it ~2x."""
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.6).astype(float)
    values = np.repeat(base, 4)
    clusters = np.repeat(np.arange(100), 4)
    clustered = bh.cluster_bootstrap_mean(values, clusters, n_boot=2000, seed=3)
    unique = bh.cluster_bootstrap_mean(base, np.arange(100), n_boot=2000, seed=3)
    naive = bh.cluster_bootstrap_mean(values, np.arange(400), n_boot=2000, seed=3)
    assert clustered.as_tuple() == pytest.approx(unique.as_tuple())
    width = clustered.high - clustered.low
    assert (naive.high - naive.low) / width == pytest.approx(0.5, abs=0.1)


# --------------------------------------------------------------------------- censoring


def test_km_median_known_answers():
    # uncensored: the ordinary median (odd and even n)
    assert bh.km_median([300, 100, 200], [True] * 3) == 200
    assert bh.km_median([100, 200, 300, 400], [True] * 4) == 250
    # censored at 200 and 400 (never emerged by then): S(100) = 4/5, S(300) = 4/5 * 2/3 =
    # 0.533, S(500) = 0 -> median 500 (the emerged-only median would say 300)
    times = [100, 200, 300, 400, 500]
    observed = [True, False, True, False, True]
    assert bh.km_median(times, observed) == 500
    assert np.median(np.array(times)[np.array(observed)]) == 300
    # fewer than half emerge: not reached
    assert np.isnan(bh.km_median([100, 800, 800], [True, False, False]))
    assert np.isnan(bh.km_median([800, 800], [False, False]))


def test_emergence_summary_counts_censored_runs_per_size():
    emergence = pd.DataFrame(
        {
            "behaviour": "facts",
            "run": [f"s{i}" for i in range(5)] + ["m0", "m1"],
            "size": ["small"] * 5 + ["medium"] * 2,
            "emergence_step": [100, np.nan, 300, np.nan, 500, 100, 100],
            "last_step": 600,
        }
    )
    out = bh.emergence_summary(emergence).set_index("size")
    assert set(out.index) == {"small", "medium"}  # sizes never pooled
    small = out.loc["small"]
    assert small["emerged"] == "3/5 runs" and small["n_runs"] == 5
    # censored at 600 (after every event): KM = ordinary median over 5 with 2 at +inf
    assert small["km_median"] == 500
    assert small["range"] == 400 and small["min"] == 100
    # 2 runs censored: a mean / sd / t-interval over the 3 emerged runs would be conditional
    # on emerging (biased early), so none is given
    assert np.isnan(small[["mean", "sd", "t_low", "t_high"]].astype(float)).all()
    medium = out.loc["medium"]
    assert medium["emerged"] == "2/2 runs" and medium["km_median"] == 100
    assert medium["sd"] == 0 and medium["t_low"] == medium["t_high"] == 100
    complete = bh.emergence_summary(emergence.assign(emergence_step=[100, 200, 300, 400, 500,
                                                                     100, 100]))  # fmt: skip
    small = complete.set_index("size").loc["small"]
    import scipy.stats

    half = scipy.stats.t.ppf(0.975, 4) * np.std([100, 200, 300, 400, 500], ddof=1) / np.sqrt(5)
    assert small["mean"] == 300 and small["t_low"] == pytest.approx(300 - half)
    text = bh.emergence_sentence(out.reset_index(), 0.6)
    assert "facts 3/5 runs (median step 500)" in text and "0.6" in text
    assert "options" not in text  # no option counts given: no caveat
    text = bh.emergence_sentence(out.reset_index(), 0.7, {"capitalisation": 2, "facts": 4})
    assert "sd 0.71 with 2 options (capitalisation) but 0.56 with 4" in text


def test_item_score_sd_by_option_count_matches_simulation():
    """At the same true chance-normalised score, one item's score is noisier with fewer
    options (variance 0.51 with 2 options vs 0.31 with 4 at 0.7), checked by simulation;
    so the CI lower bound of a 2-option behaviour crosses a threshold later."""
    rng = np.random.default_rng(0)
    for k, var in ((2, 0.51), (4, 0.31)):
        chance = 1 / k
        correct = rng.random(200_000) < chance + 0.7 * (1 - chance)
        score = (correct - chance) / (1 - chance)
        assert bh.item_score_sd(0.7, k) ** 2 == pytest.approx(var, abs=0.005)
        assert score.std() == pytest.approx(bh.item_score_sd(0.7, k), abs=0.005)
    # the consequence: 60 items at true score 0.7, CI lower bound lower with 2 options
    lows = {}
    for k in (2, 4):
        frames = item_frames({0: 1 / k + 0.7 * (1 - 1 / k)}, ["r"], 60, 3, n_options=k)
        lows[k] = bh.summarise(frames, n_boot=500).query("metric == 'score'")["ci_low"].iloc[0]
    assert lows[2] < lows[4]


# --------------------------------------------------------------------------- final scores


def _loop_multi_bootstrap(matrix, clusters, n_boot, seed):
    """Independent slow version: the same draws (runs first, then clusters), plain loops."""
    rng = np.random.default_rng(seed)
    labels = sorted(set(clusters))
    n_runs = matrix.shape[0]
    picks = rng.integers(0, n_runs, size=(n_boot, n_runs))
    draws = rng.integers(0, len(labels), size=(n_boot, len(labels)))
    means = []
    for b in range(n_boot):
        cols = [j for k in draws[b] for j, c in enumerate(clusters) if c == labels[k]]
        means.append(np.mean([matrix[r, cols].mean() for r in picks[b]]))
    return np.array(means)


def test_multi_bootstrap_items_matches_a_loop_and_is_zero_spread_for_twins():
    rng = np.random.default_rng(1)
    matrix = (rng.random((5, 30)) < np.linspace(0.3, 0.9, 5)[:, None]).astype(float)
    clusters = [f"e{i // 3}" for i in range(30)]
    res = bh.multi_bootstrap_items(matrix, clusters, n_boot=200, seed=4)
    np.testing.assert_allclose(res["mean_reps"], _loop_multi_bootstrap(matrix, clusters, 200, 4))
    assert res["estimate"] == pytest.approx(matrix.mean())
    assert res["seed_sd"] == pytest.approx(matrix.mean(axis=1).std(ddof=1))
    twins = np.repeat(matrix[:1], 4, axis=0)
    res_twins = bh.multi_bootstrap_items(twins, clusters, n_boot=200, seed=4)
    assert res_twins["seed_sd"] == 0 and np.all(res_twins["sd_reps"] == 0)


def test_final_scores_per_size_with_seed_and_item_uncertainty():
    """small runs all right, medium runs at chance: per size 1 and ~0, never pooled to 0.5;
    medium seeds differ (p = 0.25 vs 0.6), so its CI is wider than the items-only one."""
    small = item_frames({100: 1.0}, ["s0", "s1", "s2"], 60, 0)
    med_a = item_frames({100: 0.25}, ["m0", "m1"], 60, 1)
    med_b = item_frames({100: 0.6}, ["m2"], 60, 2)
    scores = pd.concat([small, med_a, med_b], ignore_index=True)
    sizes = {"s0": "small", "s1": "small", "s2": "small", "m0": "medium", "m1": "medium",
             "m2": "medium"}  # fmt: skip
    final, summary = bh.final_scores(scores, 100, sizes, n_boot=500, seed=0)
    final = final.set_index("size")
    assert final.loc["small", "value"] == 1.0
    assert final.loc["small", "ci_low"] == final.loc["small", "ci_high"] == 1.0
    assert final.loc["small", "seed_sd"] == 0
    run_means = scores.query("run in ['m0', 'm1', 'm2']").groupby("run")["score"].mean()
    assert final.loc["medium", "value"] == pytest.approx(run_means.mean())
    assert final.loc["medium", "run_min"] == pytest.approx(run_means.min())
    assert final.loc["medium", "seed_sd"] == pytest.approx(run_means.std(ddof=1))
    assert final.loc["medium", "ci_low"] < run_means.mean() < final.loc["medium", "ci_high"]
    # seeds resampled: the CI is wider than resampling the items of the pooled runs only
    pooled = scores.query("run in ['m0', 'm1', 'm2']")
    items_only = bh.cluster_bootstrap_mean(pooled["score"], pooled["cluster"], 500, 0)
    assert (final.loc["medium", "ci_high"] - final.loc["medium", "ci_low"]) > 1.5 * (
        items_only.high - items_only.low
    )
    assert summary["seed_sd"] == pytest.approx(final["seed_sd"].mean())
    assert summary["n_cells"] == 2
    assert "small" in bh.final_sentence(final.reset_index(), summary)


# --------------------------------------------------------------------------- null: twin runs


def test_identical_twin_runs_give_identical_emergence_and_zero_spread():
    """Each size has two runs with byte-identical item scores: identical emergence steps,
    zero seed spread everywhere, no inf/NaN in the spread tables."""
    from seedscope.suites.registry import get_suite

    suite = get_suite("mini")
    small = [r.name for r in suite.runs if r.size == "small"][:2]
    medium = [r.name for r in suite.runs if r.size == "medium"][:2]
    steps = {0: 0.25, 100: 0.5, 200: 0.9, 300: 0.95}
    frames = pd.concat(
        [
            item_frames(steps, small, 80, 0, twins=True, cluster_size=2),
            item_frames(steps, medium, 80, 1, twins=True, cluster_size=2),
            item_frames(steps, small, 80, 2, twins=True, behaviour="facts"),
            item_frames(steps, medium, 80, 3, twins=True, behaviour="facts"),
        ],
        ignore_index=True,
    )
    table = bh.behaviour_table(frames, suite=suite, n_boot=200, seed=0)
    em = bh.emergence_table(table, 0.6)
    for _, part in em.groupby(["behaviour", "size"]):
        assert part["emergence_step"].nunique() == 1 and part["emerged"].all()
    summary = bh.emergence_summary(em)
    assert (summary["sd"] == 0).all() and (summary["range"] == 0).all()
    mid_final = bh.seed_spread_mid_vs_final(
        table, mid_step=100, final_step=300, item_scores=frames, n_boot=200
    )
    assert (mid_final[["sd_change_low", "sd_change_high"]] == 0).all().all()
    # 2 seeds can never detect a drop of the seed sd: NaN, and the sentence says so
    assert mid_final["detectable_ratio"].isna().all()
    assert "with 2 seeds the paired CI cannot exclude 0" in bh.mid_final_sentence(mid_final)
    numeric = mid_final.select_dtypes("number").drop(
        columns=["detectable_ratio", "detectable_change"]
    )
    assert np.isfinite(numeric.to_numpy()).all()
    assert (mid_final[["sd_mid", "sd_final", "sd_change", "range_mid"]] == 0).all().all()
    sizes = {r.name: r.size for r in suite.runs}
    final, summ = bh.final_scores(frames, 300, sizes, n_boot=200, seed=0)
    assert (final["seed_sd"] == 0).all() and summ["seed_sd"] == 0
    assert summ["ci_low"] == summ["ci_high"] == 0
    assert np.isfinite(final.select_dtypes("number").to_numpy()).all()


def test_seed_spread_mid_vs_final_within_size():
    """Planted: small seeds spread at mid (0.9, 0.9, 0.2), agree at the end; medium ones
    agree throughout. Sizes are never pooled (a size gap is not seed spread)."""
    rows = []
    values = {"a": (0.9, 0.9), "b": (0.9, 0.9), "c": (0.2, 0.9), "d": (0.1, 0.1), "e": (0.1, 0.1)}
    sizes = {"a": "small", "b": "small", "c": "small", "d": "medium", "e": "medium"}
    for run, (mid, end) in values.items():
        for step, v in ((200, mid), (400, end)):
            rows.append(("brackets", run, step, "all", "score", v, v - 0.1, v + 0.1, 50))
    table = pd.DataFrame(
        rows,
        columns=["behaviour", "run", "step", "group", "metric", "value", "ci_low", "ci_high", "n"],
    ).assign(size=lambda f: f["run"].map(sizes))
    out = bh.seed_spread_mid_vs_final(table, mid_step=210, final_step=390).set_index("size")
    assert out.loc["small", "sd_mid"] == pytest.approx(np.std([0.9, 0.9, 0.2], ddof=1))
    assert out.loc["small", "sd_final"] == 0
    assert out.loc["small", "sd_change"] == pytest.approx(-out.loc["small", "sd_mid"])
    assert out.loc["small", "step_mid"] == 200 and out.loc["small", "step_final"] == 400
    assert out.loc["medium", "sd_mid"] == 0 and out.loc["medium", "sd_change"] == 0
    assert "sd_ratio" not in out.columns


def test_behaviours_params_validate_threshold_and_scoring():
    from seedscope.analyses.params import BehavioursParams
    from seedscope.core.config import from_section

    assert from_section(BehavioursParams, {}, "behaviours").score_threshold == 0.6
    with pytest.raises(SeedscopeError, match="score_threshold must be in"):
        from_section(BehavioursParams, {"score_threshold": 1.2}, "behaviours")
    with pytest.raises(SeedscopeError, match="score_threshold"):
        from_section(BehavioursParams, {"threshold": 0.8}, "behaviours")
    with pytest.raises(SeedscopeError, match="scoring must be 'per_token', 'summed' or 'pmi'"):
        from_section(BehavioursParams, {"scoring": "mean"}, "behaviours")


def test_behaviour_table_and_figures():
    item = bh.ProbeItem("punctuation", "ab", ".", ("!",))
    items = [item, item, bh.ProbeItem("punctuation", "ab", "!", (".",))]
    tok = char_tokenizer(["ab.!"])
    scores = {}
    for step, bonus in ((0, -1.0), (10, 1.0)):
        table = torch.zeros(5, 5)
        table[tok.token_to_id("b"), tok.token_to_id(".")] = bonus
        scores[("small-x21", step)] = bh.score_items(FixedLogits(table), tok, items)
    from seedscope.suites.registry import get_suite

    t = bh.behaviour_table(scores, suite=get_suite("mini"), n_boot=50)
    acc = t.query("metric == 'accuracy'").set_index("step")["value"]
    assert acc.loc[0] == pytest.approx(1 / 3) and acc.loc[10] == pytest.approx(2 / 3)
    score = t.query("metric == 'score'").set_index("step")["value"]
    assert score.loc[0] == pytest.approx(-1 / 3) and score.loc[10] == pytest.approx(1 / 3)
    margin = t.query("metric == 'margin'").set_index("step")["value"]
    assert margin.loc[0] == pytest.approx(-1 / 3) and margin.loc[10] == pytest.approx(1 / 3)
    assert set(t["seed"]) == {21}
    suite = get_suite("mini")
    runs = [r.name for r in suite.runs[:2]] + [r.name for r in suite.runs[5:7]]
    frames = item_frames({0: 0.25, 100: 0.9, 200: 0.95}, runs[:3], 40, 0)
    frames = pd.concat([frames, item_frames({0: 0.25, 100: 0.3, 200: 0.3}, runs[3:], 40, 1)])
    big = bh.behaviour_table(frames, suite=suite, n_boot=100)
    fig = bh.plot_behaviour_heatmap(big, "brackets", "score")
    assert "brackets" in fig.axes[0].get_title()
    assert "(seed " in fig.axes[0].get_yticklabels()[0].get_text()
    em = bh.emergence_table(big, 0.6)
    assert em["emerged"].sum() == 3
    fig2 = bh.plot_emergence(em)
    assert fig2.axes[0].get_xlabel().startswith("emergence step")
    assert "1 run x behaviour pairs censored" in fig2.axes[0].get_title()
    fig3 = bh.plot_size_comparison(big, "score")
    assert fig3.axes[0].get_title() == "brackets"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_seed_spread_change_ci_planted_convergence():
    """Eight seeds split 4/4 at mid-training (right vs at chance), all right at the end: the
    paired Multi-Bootstrap CI of sd_final - sd_mid lies below 0."""
    runs = [f"r{i}" for i in range(8)]
    frames = pd.concat(
        [
            item_frames({100: 0.95, 200: 0.97}, runs[:4], 60, 0),
            item_frames({100: 0.25, 200: 0.97}, runs[4:], 60, 1),
        ],
        ignore_index=True,
    )
    table = bh.behaviour_table(frames, n_boot=0)
    out = bh.seed_spread_mid_vs_final(table, 100, 200, item_scores=frames, n_boot=500, seed=0).iloc[
        0
    ]
    assert out["size"] == "all" and out["n_runs"] == 8
    assert out["sd_change"] < 0
    assert out["sd_change_low"] < out["sd_change"] < out["sd_change_high"] < 0
    ratio = bh.detectable_sd_ratio(8, 500, seed=0)
    assert out["detectable_ratio"] == ratio and 0 < ratio < 1
    assert out["detectable_change"] == pytest.approx(-out["sd_mid"] * (1 - ratio))
    text = bh.mid_final_sentence(pd.DataFrame([out]))
    assert (
        f"with 8 seeds the paired CI excludes 0 with 80% power only when the seed sd falls "
        f"to {ratio:.0%}" in text
    )
    assert "Of 1 behaviour x size cells, 1 have a CI below 0" in text


def _convergence_power(n_runs, ratio, n_sims, binomial=False, n_items=100, seed=0):
    """Fraction of simulated designs whose paired Multi-Bootstrap CI of sd_final - sd_mid
    (`multi_bootstrap_items` with one seed for both checkpoints, as in
    `seed_spread_mid_vs_final`) lies below 0, when the seed sd falls from 0.15 to
    0.15 * ratio. binomial=False: item scores = item base + run offset (no item noise);
    True: each item right with that probability (the referee's simulation)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, n_items)
    clusters = [f"c{i // 2}" for i in range(n_items)]
    hits = 0
    for s in range(n_sims):
        grids = []
        for sd, shift in ((0.15, 0.0), (0.15 * ratio, 0.15)):
            p = base + shift + rng.normal(0, sd, n_runs)[:, None]
            grids.append((rng.random(p.shape) < np.clip(p, 0, 1)).astype(float) if binomial
                         else p)  # fmt: skip
        reps = [bh.multi_bootstrap_items(g, clusters, 200, s)["sd_reps"] for g in grids]
        hits += np.percentile(reps[1] - reps[0], 97.5) < 0
    return hits / n_sims


def test_five_seed_power_matches_the_detectable_ratio():
    """With 5 seeds the mid-vs-final CI is nearly powerless, and `detectable_sd_ratio` says
    how much: at its ratio the real procedure detects the drop ~80% of the time, at half the
    drop (ratio 0.5) rarely, with no drop about as often as its 2.5% tail; item noise (100
    binary items) lowers power further (the referee's 5x convergence: ~9%). 2 seeds can
    never detect it."""
    ratio = bh.detectable_sd_ratio(5, 200)
    assert 0.05 < ratio < 0.3
    assert 0.65 <= _convergence_power(5, ratio, 150) <= 0.95
    assert _convergence_power(5, 0.5, 150) < 0.4
    assert _convergence_power(5, 1.0, 150) <= 0.1
    assert _convergence_power(5, 0.2, 100, binomial=True) < 0.3
    assert np.isnan(bh.detectable_sd_ratio(2, 200))
    assert bh.detectable_sd_ratio(10, 200) > ratio  # more seeds detect a smaller drop
