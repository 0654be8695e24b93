"""The embedded corpus: determinism, planted ground truth found in the text, metadata, text path."""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer

from seedscope.core.errors import SeedscopeError
from seedscope.core.io import read_json
from seedscope.data.corpus import (
    EOS,
    CorpusConfig,
    build_corpus,
    freq_bucket,
    seen_before,
    token_class,
)

SMALL = {
    "n_train_tokens": 200_000,
    "n_eval_tokens": 16_384,
    "phrase_counts": [0, 1, 10, 100],
    "phrases_per_count": 3,
}
FILES = (
    "train_tokens.npy",
    "eval_tokens.npy",
    "eval_meta.parquet",
    "train_token_counts.npy",
    "ground_truth.json",
    "corpus_stats.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("corpus")
    cfg = CorpusConfig(**SMALL)
    stats = build_corpus(cfg, out)
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    train = np.load(out / "train_tokens.npy")
    ends = np.flatnonzero(train == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    train_docs = tok.decode_batch([train[a:b].tolist() for a, b in zip(starts, ends, strict=True)])
    ev = np.load(out / "eval_tokens.npy")
    stream = ev[:, 1:].ravel()
    cut = np.flatnonzero(stream == eos)
    pieces = np.split(stream, cut)
    eval_docs = tok.decode_batch([p[p != eos].tolist() for p in pieces])
    return {
        "cfg": cfg,
        "out": out,
        "stats": stats,
        "tok": tok,
        "eos": eos,
        "gt": read_json(out / "ground_truth.json"),
        "train_docs": train_docs,
        "train_text": "\n".join(train_docs),
        "eval_docs": eval_docs,  # the last one is cut by the end of the eval windows
        "eval_text": "\n".join(eval_docs),
        "meta": pd.read_parquet(out / "eval_meta.parquet"),
        "eval_tokens": ev,
    }


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_corpus(CorpusConfig(**SMALL), again)
    for name in FILES:
        assert (again / name).read_bytes() == (built["out"] / name).read_bytes(), name
    other = tmp_path / "other"
    build_corpus(CorpusConfig(seed=1, **SMALL), other)
    assert (other / "train_tokens.npy").read_bytes() != (
        built["out"] / "train_tokens.npy"
    ).read_bytes()
    gt1 = read_json(other / "ground_truth.json")
    assert gt1["languages"]["mero"]["lexicon"] != built["gt"]["languages"]["mero"]["lexicon"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"window": 4}, "window"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"n_eval_tokens": 64}, "n_eval_tokens"),
        ({"n_train_tokens": 10_000, "n_eval_tokens": 16_384}, "n_train_tokens"),
        ({"source": "synthetc"}, "synthetic"),
        ({"bracket_depth_probs": [0.5, 0.4]}, "bracket_depth_probs"),
        ({"mix": {"brackets": 0.1}}, "bracket"),
        ({"mix": {"email": 1.5}}, "mix.email"),
        ({"phrase_counts": [100_000]}, "phrase_counts"),
        ({"repeat_fraction": 0.95}, "repeat_fraction"),
    ],
)
def test_bad_config_names_key_and_fix(change: dict, key: str) -> None:
    with pytest.raises(SeedscopeError, match=re.escape(key)) as err:
        CorpusConfig(**{**SMALL, **change})
    assert "Fix:" in str(err.value)


def test_ground_truth_schema(built) -> None:
    gt = built["gt"]
    for key in (
        "languages",
        "default_language",
        "sentence_end",
        "brackets",
        "tlds",
        "email_domains",
        "acronyms",
        "phrases",
        "facts",
        "capitalised_sentence_start",
    ):
        assert key in gt, key
    assert gt["default_language"] in gt["languages"]
    assert len(gt["languages"]) == 3
    assert gt["brackets"] == [["(", ")"], ["[", "]"], ["{", "}"]]
    assert gt["capitalised_sentence_start"] is True
    lexicons = [set(spec["lexicon"]) for spec in gt["languages"].values()]
    assert sum(map(len, lexicons)) == len(set().union(*lexicons))  # disjoint
    for spec in gt["languages"].values():
        assert all(set(w) <= set(spec["letters"]) for w in spec["lexicon"])
    for a in gt["acronyms"]:
        assert a["acronym"] == "".join(w[0] for w in a["name"].split())
    for f in gt["facts"]:
        assert set(f) >= {"entity", "relation", "attribute", "phrasings_train", "phrasings_heldout"}
        assert not set(f["phrasings_train"]) & set(f["phrasings_heldout"])


def _bracket_groups(doc: str) -> list[int]:
    """Max depth of each top-level bracket group; asserts balance and matching kinds."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    depths, current = [], 0
    for ch in doc:
        if ch in "([{":
            stack.append(ch)
            current = max(current, len(stack))
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], doc
            if not stack:
                depths.append(current)
                current = 0
    assert not stack, doc
    return depths


def test_brackets_balanced_with_configured_depths(built) -> None:
    acronym = re.compile(r"\([A-Z]+\)")
    depths: list[int] = []
    for doc in built["train_docs"]:
        depths += _bracket_groups(acronym.sub("", doc))
    counts = np.bincount(depths, minlength=5)[1:]
    recorded = built["stats"]["train"]["bracket_max_depth_counts"]
    assert counts.tolist() == [recorded[str(d)] for d in range(1, 5)]
    probs = built["gt"]["bracket_depth_probs"]
    assert counts.sum() > 200
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.06)


def test_emails_well_formed(built) -> None:
    gt = built["gt"]
    pattern = re.compile(r"[a-z]+(?:[._][a-z]+)?\d{0,2}@([a-z]+)\.([a-z]+)")
    found = [m.rstrip(".!?") for m in re.findall(r"\S+@\S+", built["train_text"])]
    assert len(found) == built["stats"]["train"]["n_emails"] > 50
    for email in found:
        m = pattern.fullmatch(email)
        assert m, email
        assert m.group(1) in gt["email_domains"]
        assert m.group(2) in gt["tlds"]


def test_phrase_counts_exact(built) -> None:
    gt = built["gt"]
    planned = [c for c in SMALL["phrase_counts"] for _ in range(SMALL["phrases_per_count"])]
    assert [p["train_count"] for p in gt["phrases"]] == planned
    for p in gt["phrases"]:
        pat = re.compile(r"(?<!\w)" + re.escape(p["text"]) + r"(?!\w)")
        assert len(pat.findall(built["train_text"])) == p["train_count"], p
        assert len(pat.findall(built["eval_text"])) >= 1, p


def test_facts_consistent_and_heldout_only_in_eval(built) -> None:
    gt, train, ev = built["gt"], built["train_text"], built["eval_text"]
    truth = {(f["entity"], f["relation"]): f["attribute"] for f in gt["facts"]}
    stated = set()
    for f in gt["facts"]:
        for t in f["phrasings_train"]:
            pat = (
                re.escape(t)
                .replace(r"\{entity\}", r"([A-Z]\w+)")
                .replace(r"\{attribute\}", r"(\w+)")
            )
            for m in re.finditer(pat, train):
                ent_first = t.index("{entity}") < t.index("{attribute}")
                ent, att = m.groups() if ent_first else m.groups()[::-1]
                assert truth[(ent, f["relation"])] == att
                stated.add((ent, f["relation"]))
        for t in f["phrasings_heldout"]:
            assert t.format(entity=f["entity"], attribute=f["attribute"]) not in train
            constant = max(re.split(r"\{entity\}|\{attribute\}", t), key=len)
            assert constant not in train
            assert constant in ev, t
    assert stated == set(truth)  # every fact is stated in train


def test_acronym_introduced_before_lone_use(built) -> None:
    n_used = 0
    for doc in built["train_docs"]:
        for a in built["gt"]["acronyms"]:
            uses = [m.start() for m in re.finditer(rf"(?<![\w(]){a['acronym']}(?![\w)])", doc)]
            if not uses:
                continue
            intros = [
                m.start() for m in re.finditer(re.escape(f"{a['name']} ({a['acronym']})"), doc)
            ]
            assert intros and intros[0] < uses[0], (a, doc)
            n_used += 1
    assert n_used > 20


def test_foreign_paragraphs_use_their_lexicon(built) -> None:
    gt = built["gt"]
    langs = gt["languages"]
    default = gt["default_language"]
    # foreign vowels are non-ASCII and used by no other language
    exclusive = {
        name: set(spec["letters"]) - set(string.ascii_letters) for name, spec in langs.items()
    }
    assert not exclusive[default]
    seen = dict.fromkeys(langs, 0)
    for doc in built["train_docs"]:
        for par in doc.split("\n\n"):
            hits = [n for n in langs if n != default and set(par.lower()) & exclusive[n]]
            if not hits:
                continue
            assert len(hits) == 1, par
            lex = set(langs[hits[0]]["lexicon"])
            words = re.findall(r"[^\W\d_]+", par)
            assert all(w.lower() in lex for w in words), par
            seen[hits[0]] += 1
    assert all(seen[n] > 10 for n in langs if n != default)


def test_sentences_end_and_restart_capitalised(built) -> None:
    n = 0
    for doc in built["train_docs"]:
        for m in re.finditer(r"[.!?](?: |\n\n)(\S)", doc):
            assert m.group(1).isupper(), doc[max(0, m.start() - 40) : m.end() + 10]
            n += 1
    assert n > 1000


def test_train_eval_documents_disjoint(built) -> None:
    train = set(built["train_docs"])
    complete = built["eval_docs"][:-1]
    assert len(complete) > 20
    assert not train & set(complete)


def test_tokenizer_round_trip_with_auto_tokenizer(built) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built["out"] / "tokenizer"))
    assert tok.eos_token == EOS and tok.eos_token_id == built["eos"] == built["stats"]["eos_id"]
    samples = [
        built["train_docs"][0],
        built["eval_docs"][3],
        "Dálé véní (kalo [mipu]) {x}, ab.cd@velmo.org? Äöüå 42!\n\nNext.",
    ]
    for text in samples:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert ids == built["tok"].encode(text).ids


def test_metadata_columns_consistent(built) -> None:
    meta, ev, eos = built["meta"], built["eval_tokens"], built["eos"]
    n_windows, window = ev.shape
    assert n_windows == SMALL["n_eval_tokens"] // 128 and window == 128
    assert len(meta) == n_windows * window
    np.testing.assert_array_equal(meta["window"], np.repeat(np.arange(n_windows), window))
    np.testing.assert_array_equal(meta["pos"], np.tile(np.arange(window), n_windows))
    np.testing.assert_array_equal(meta["token_id"].to_numpy(), ev.ravel())
    assert (ev[:, 0] == eos).all()
    first = meta[meta["pos"] == 0]
    assert set(first["tag"]) == {"special"} and set(first["token_class"]) == {"special"}
    # seen_before, recomputed with plain sets
    expected = []
    for row in ev:
        seen: set[int] = set()
        for t in row.tolist():
            expected.append(t in seen)
            seen.add(t)
    assert meta["seen_before"].tolist() == expected
    np.testing.assert_array_equal(seen_before(ev).ravel(), expected)
    # train counts and frequency buckets
    counts = np.load(built["out"] / "train_token_counts.npy")
    train = np.load(built["out"] / "train_tokens.npy")
    assert train.dtype == np.uint16 and ev.dtype == np.int32
    np.testing.assert_array_equal(counts, np.bincount(train, minlength=len(counts)))
    assert meta["freq_bucket"].tolist() == [freq_bucket(int(counts[t])) for t in ev.ravel()]
    # token strings and classes
    tok = built["tok"]
    assert meta["token"].tolist() == [
        tok.decode([t], skip_special_tokens=False) for t in ev.ravel()
    ]
    cls = [token_class(s, t == eos) for s, t in zip(meta["token"], ev.ravel(), strict=True)]
    assert meta["token_class"].tolist() == cls
    dot = tok.token_to_id(".")
    assert set(meta.loc[meta["token_id"] == dot, "token_class"]) == {"punctuation"}


@pytest.mark.parametrize(
    ("token", "special", "expected"),
    [
        (EOS, True, "special"),
        (".", False, "punctuation"),
        (" (", False, "punctuation"),
        ("])", False, "punctuation"),
        ("42", False, "digit"),
        (" 7", False, "digit"),
        ("Ka", False, "capitalised"),
        (" Ve", False, "capitalised"),
        (" ka", False, "whitespace-led"),
        ("\n", False, "whitespace-led"),
        ("lo", False, "word-continuation"),
        ("\ufffd", False, "other"),
        ("o@", False, "other"),
    ],
)
def test_token_class_hand_picked(token: str, special: bool, expected: str) -> None:
    assert token_class(token, special) == expected


def test_token_tags_align_with_planted_spans(built) -> None:
    meta, gt = built["meta"], built["gt"]
    at = meta[meta["role"] == "email_at"]
    assert len(at) > 0 and all("@" in t for t in at["token"])
    tld = meta[meta["role"] == "email_tld"]["token"].str.strip(".")
    assert len(tld) > 0 and all(any(t in x for x in gt["tlds"]) for t in tld)
    depth = meta["bracket_depth"]
    assert set(meta.loc[depth > 0, "tag"]) <= {"bracket", "acronym"}
    opens = meta[
        meta["token"].str.strip().str[:1].isin(["(", "[", "{"]) & (meta["tag"] == "bracket")
    ]
    assert len(opens) > 0 and (opens["bracket_depth"] >= 1).all()
    # phrase tokens form runs that spell the phrase (runs cut by a window edge are parts of it)
    texts = {p["id"]: p["text"] + "." for p in gt["phrases"]}
    buckets = {p["id"]: freq_bucket(p["train_count"]) for p in gt["phrases"]}
    ph = meta[meta["phrase_id"] >= 0]
    assert (ph["phrase_freq_bucket"] == ph["phrase_id"].map(buckets)).all()
    assert (meta.loc[meta["phrase_id"] < 0, "phrase_freq_bucket"] == "none").all()
    run_id = ((meta["phrase_id"] != meta["phrase_id"].shift()) | (meta["pos"] == 0)).cumsum()
    whole = 0
    for (_, pid), run in ph.groupby([run_id[ph.index], ph["phrase_id"]]):
        spelled = "".join(run["token"]).strip()
        assert spelled in texts[pid], (spelled, texts[pid])
        whole += spelled == texts[pid]
    assert whole >= len(gt["phrases"]) // 2
    # random-run paragraphs are one run repeated; copies after the first are second_copy
    last_doc = meta["doc_id"].max()
    n_docs = 0
    for _doc_id, rows in meta[(meta["doc_id"] >= 0) & (meta["doc_id"] < last_doc)].groupby(
        "doc_id"
    ):
        if not (rows["tag"] == "random_repeat").all():
            continue
        n_docs += 1
        for par in "".join(rows["token"]).split("\n\n"):
            words = par.split(" ")
            periods = [
                n for n in range(1, len(words) // 2 + 1) if words == words[:n] * (len(words) // n)
            ]
            assert periods, par
        copies = rows["second_copy"].to_numpy()
        assert copies.any() and not copies[0]
    assert n_docs > 5
    assert (meta.loc[meta["fact_heldout"], "tag"] == "fact").all() and meta["fact_heldout"].any()
    frac = built["stats"]["eval"]["random_repeat_token_fraction"]
    assert frac == pytest.approx(built["cfg"].repeat_fraction, abs=0.06)


# ----------------------------------------------------------------------------- real text


def _write_text(path: Path, n_paragraphs: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "and",
        "then",
        "ran",
        "far",
        "away",
        "(it",
        "was)",
    ]
    words += ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "naïve", "42"]
    pars = []
    for _ in range(n_paragraphs):
        sents = [
            " ".join(rng.choice(words, size=rng.integers(5, 12))).capitalize() + "."
            for _ in range(4)
        ]
        pars.append(" ".join(sents))
    text = "\n\n".join(pars) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


TEXT_CFG = {"n_train_tokens": 6_000, "n_eval_tokens": 2_048, "window": 32, "vocab_size": 300}


def test_text_source_builds_same_outputs(tmp_path: Path, built) -> None:
    data = tmp_path / "data"
    data.mkdir()
    text = _write_text(data / "a.txt", 400)
    text += _write_text(data / "b.txt", 100, seed=1)
    out = tmp_path / "out"
    stats = build_corpus(CorpusConfig(source="text", text_dir=str(data), **TEXT_CFG), out)
    ev = np.load(out / "eval_tokens.npy")
    meta = pd.read_parquet(out / "eval_meta.parquet")
    assert ev.shape == (2_048 // 32, 32) and len(meta) == ev.size
    assert set(meta["tag"]) == {"text", "special"}
    assert stats["train"]["n_tokens"] >= 6_000
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    assert (ev[:, 0] == eos).all()
    stream = ev[:, 1:].ravel()
    docs = tok.decode_batch(
        [p[p != eos].tolist() for p in np.split(stream, np.flatnonzero(stream == eos))]
    )
    assert all(d in text for d in docs if d)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert auto.decode(auto.encode(docs[0])) == docs[0]
    # an existing tokenizer folder is used as given
    out2 = tmp_path / "out2"
    cfg2 = CorpusConfig(
        source="text", text_dir=str(data), tokenizer_dir=str(built["out"] / "tokenizer"), **TEXT_CFG
    )
    build_corpus(cfg2, out2)
    ev2 = np.load(out2 / "eval_tokens.npy")
    first = built["tok"].decode(ev2[0, 1:].tolist())
    assert first and first in text
    assert (out2 / "tokenizer" / "vocab.json").read_bytes() == (
        built["out"] / "tokenizer" / "vocab.json"
    ).read_bytes()


def test_text_source_errors(tmp_path: Path) -> None:
    def cfg(d: Path, **kw) -> CorpusConfig:
        return CorpusConfig(source="text", text_dir=str(d), **{**TEXT_CFG, **kw})

    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    with pytest.raises(SeedscopeError, match="no \\*.txt files"):
        build_corpus(cfg(empty_dir), tmp_path / "o1")
    d = tmp_path / "d"
    d.mkdir()
    _write_text(d / "good.txt", 50)
    (d / "blank.txt").write_text("  \n\n")
    with pytest.raises(SeedscopeError, match="blank.txt.*empty"):
        build_corpus(cfg(d), tmp_path / "o2")
    (d / "blank.txt").write_bytes(b"caf\xe9 latin-1 text\n")
    with pytest.raises(SeedscopeError, match="blank.txt.*not UTF-8"):
        build_corpus(cfg(d), tmp_path / "o3")
    (d / "blank.txt").unlink()
    with pytest.raises(SeedscopeError, match="too little"):
        build_corpus(cfg(d, n_eval_tokens=32_768, n_train_tokens=40_000), tmp_path / "o4")
    assert not (tmp_path / "o4").exists()
