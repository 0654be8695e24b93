"""Behaviour battery: probe generators against their ground truth, the scorer against hand
computations and an independent per-option loop, emergence detection on known curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from seedscope import behaviours as bh
from seedscope.errors import SeedscopeError

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
    out = bh.score_items(model, tok, items, batch_size=2)
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
    out = bh.score_items(model, tok, items, batch_size=5)
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
        "accuracy",
        "margin",
        "induction_gain",
        "first_copy_loss",
        "second_copy_loss",
    }


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


def make_table():
    from seedscope.suites import get_suite

    suite = get_suite("mini")
    runs = [r.name for r in suite.runs[:3]] + [r.name for r in suite.runs[5:7]]
    steps = [0, 100, 200, 300, 400]
    cross = {runs[0]: 100, runs[1]: 200, runs[2]: 300, runs[3]: 100, runs[4]: None}
    rows = []
    rng = np.random.default_rng(0)
    for run in runs:
        for s in steps:
            c = cross[run]
            v = 0.9 if c is not None and s >= c else 0.2
            for behaviour, val in (("brackets", v), ("facts", 0.5 + 0.1 * rng.random())):
                for metric in ("accuracy", "margin"):
                    rows.append((behaviour, run, s, "all", metric, val, val - 0.1, val + 0.1, 50))
    table = pd.DataFrame(
        rows,
        columns=["behaviour", "run", "step", "group", "metric", "value", "ci_low", "ci_high", "n"],
    )
    info = pd.DataFrame(
        [(r.name, r.seed, r.size, r.label) for r in suite.runs],
        columns=["run", "seed", "size", "label"],
    )
    return table.merge(info, on="run"), cross


def test_emergence_table_and_spread():
    table, cross = make_table()
    em = bh.emergence_table(table, {"brackets": 0.5})
    got = dict(zip(em["run"], em["emergence_step"], strict=True))
    for run, c in cross.items():
        assert np.isnan(got[run]) if c is None else got[run] == c, run
    spread = bh.emergence_spread(em, n_boot=200, seed=0).set_index("size")
    small = spread.loc["small"]
    assert small["mean"] == pytest.approx(200.0)
    assert small["sd"] == pytest.approx(100.0)
    assert small["range"] == pytest.approx(200.0)
    assert small["ci_low"] <= 200.0 <= small["ci_high"]
    assert spread.loc["medium", "n_emerged"] == 1 and spread.loc["medium", "n_runs"] == 2
    assert spread.loc["all", "n_runs"] == 5
    with pytest.raises(SeedscopeError):
        bh.emergence_table(table, {"bracketz": 0.5})


def test_seed_spread_mid_vs_final():
    table, _ = make_table()
    out = bh.seed_spread_mid_vs_final(table, mid_step=200, final_step=400)
    row = out.query("behaviour == 'brackets' and size == 'small'").iloc[0]
    # at 200 the small runs are 0.9, 0.9, 0.2; at 400 all 0.9
    assert row["sd_mid"] == pytest.approx(np.std([0.9, 0.9, 0.2], ddof=1))
    assert row["sd_final"] == pytest.approx(0.0)
    assert row["range_mid"] == pytest.approx(0.7)
    assert out["sd_mid"].is_monotonic_decreasing


def test_behaviour_table_and_figures():
    item = bh.ProbeItem("punctuation", "ab", ".", ("!",))
    items = [item, item, bh.ProbeItem("punctuation", "ab", "!", (".",))]
    tok = char_tokenizer(["ab.!"])
    scores = {}
    for step, bonus in ((0, -1.0), (10, 1.0)):
        table = torch.zeros(5, 5)
        table[tok.token_to_id("b"), tok.token_to_id(".")] = bonus
        scores[("small-x21", step)] = bh.score_items(FixedLogits(table), tok, items)
    from seedscope.suites import get_suite

    t = bh.behaviour_table(scores, suite=get_suite("mini"), n_boot=50)
    acc = t.query("metric == 'accuracy'").set_index("step")["value"]
    assert acc.loc[0] == pytest.approx(1 / 3) and acc.loc[10] == pytest.approx(2 / 3)
    margin = t.query("metric == 'margin'").set_index("step")["value"]
    assert margin.loc[0] == pytest.approx(-1 / 3) and margin.loc[10] == pytest.approx(1 / 3)
    assert set(t["seed"]) == {21}
    big, _ = make_table()
    fig = bh.plot_behaviour_heatmap(big, "brackets")
    assert "brackets" in fig.axes[0].get_title()
    assert "(seed 21)" in fig.axes[0].get_yticklabels()[0].get_text()
    em = bh.emergence_table(big, {"brackets": 0.5, "facts": 0.55})
    fig2 = bh.plot_emergence(em)
    assert fig2.axes[0].get_xlabel().startswith("emergence step")
    fig3 = bh.plot_size_comparison(big)
    assert fig3.axes[0].get_title() == "brackets"
    import matplotlib.pyplot as plt

    plt.close("all")
