"""The behaviour battery: nine probe sets, each a prompt with one correct option and competing
wrong ones, scored by a model's log-probs, tracked over runs and checkpoints.

A probe (`ProbeItem`) comes from one of two sources behind one interface: `planted_probes`
builds them from the mini-suite corpus's `ground_truth.json` (the planted structure is known
exactly), `english_probes` from the packaged YAML templates under `probes/` (for GPT-2/Pythia
tokenizers). `score_items` gives one row per item (log-prob of every option, correct?,
margin, plus the language-mass and induction metrics); `summarise` and `behaviour_table`
aggregate with item-bootstrap CIs; `emergence_step` finds when a behaviour appears and stays.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seedscope.errors import SeedscopeError, closest
from seedscope.stage_params import BEHAVIOURS  # one list, defined beside the params

SOURCES: tuple[str, ...] = ("planted", "english")
PROBES_DIR = Path(__file__).with_name("probes")

# Behaviour-specific metrics reported next to accuracy and margin.
EXTRA_METRICS: dict[str, tuple[str, ...]] = {
    "language": ("lang_mass", "lang_share"),
    "induction": ("induction_gain", "first_copy_loss", "second_copy_loss"),
}


@dataclass(frozen=True)
class ProbeItem:
    """One probe: the model reads `prompt`; `correct` must outscore every alternative.

    Options are continuations of the prompt text (a leading space belongs to the option, as
    in GPT-2's tokenisation). `group` splits a behaviour for breakdowns (bracket depth,
    frequency bucket, seen/heldout phrasing, language, ...). `language` is the prompt's
    language (language-mass metric); `first_copy` is the first copy of an induction
    sequence (the prompt starts with it, then repeats it).
    """

    behaviour: str
    prompt: str
    correct: str
    alternatives: tuple[str, ...]
    group: str = "all"
    language: str | None = None
    first_copy: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def options(self) -> tuple[str, ...]:
        """Correct option first, then the alternatives."""
        return (self.correct, *self.alternatives)


def check_behaviours(names: Iterable[str] | str | None) -> list[str]:
    """Validate behaviour names (None or 'all' -> all nine, in the fixed order)."""
    if names is None or names == "all":
        return list(BEHAVIOURS)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if name not in BEHAVIOURS:
            raise SeedscopeError(
                f"Unknown behaviour {name!r}.{closest(str(name), BEHAVIOURS)}",
                f"use some of: {', '.join(BEHAVIOURS)}.",
            )
    return names


def _rng(seed: int, behaviour: str) -> np.random.Generator:
    """One stream per behaviour, so asking for a subset does not change the items."""
    return np.random.default_rng([int(seed), BEHAVIOURS.index(behaviour)])


def _pick(rng: np.random.Generator, pool: Sequence[Any], k: int, exclude: Iterable = ()) -> list:
    """k distinct elements of `pool` not in `exclude` (fewer if the pool is short)."""
    ex = set(exclude)
    cand = list(dict.fromkeys(p for p in pool if p not in ex))
    if not cand:
        return []
    idx = rng.permutation(len(cand))[:k]
    return [cand[i] for i in idx]


def _sample(rng: np.random.Generator, items: list[ProbeItem], n: int) -> list[ProbeItem]:
    """n items without replacement (all of them when fewer), in pool order."""
    if len(items) <= n:
        return items
    keep = np.sort(rng.choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


# --------------------------------------------------------------------------- generic generators


def bracket_prompt(
    rng: np.random.Generator, words: Sequence[str], pairs: Sequence[Sequence[str]], depth: int
) -> tuple[str, str]:
    """A text with `depth` open brackets (plus some closed pairs before and between them);
    returns (prompt, the close of the innermost open bracket). Open brackets stick to the
    following word, closes to the preceding one: `a (b [c d] (e`."""
    tokens: list[str] = []

    def word() -> str:
        return words[int(rng.integers(len(words)))]

    def closed_group() -> str:
        o, c = pairs[int(rng.integers(len(pairs)))]
        inner = [word() for _ in range(int(rng.integers(1, 3)))]
        return f"{o}{' '.join(inner)}{c}"

    tokens.append(word())
    stack = []
    for _ in range(depth):
        if rng.random() < 0.4:
            tokens.append(closed_group())
        o, c = pairs[int(rng.integers(len(pairs)))]
        stack.append(c)
        tokens.append(o + word())
        for _ in range(int(rng.integers(0, 3))):
            tokens.append(word())
    return " ".join(tokens), stack[-1]


def _brackets(rng, words, pairs, n, max_depth=4) -> list[ProbeItem]:
    closes = [c for _, c in pairs]
    items = []
    for i in range(n):
        depth = 1 + i % max_depth
        prompt, close = bracket_prompt(rng, words, pairs, depth)
        alts = tuple(c for c in dict.fromkeys(closes) if c != close)
        items.append(ProbeItem("brackets", prompt, close, alts, group=f"depth{depth}"))
    return items


def _emails(rng, lead_ins, locals_, domains, tlds, not_tlds, at_alts, n) -> list[ProbeItem]:
    items = []
    for i in range(n):
        lead = lead_ins[int(rng.integers(len(lead_ins)))]
        local = locals_[int(rng.integers(len(locals_)))]
        domain = domains[int(rng.integers(len(domains)))]
        if i % 2 == 0:
            alts = tuple(a for a in at_alts if a != "@")
            items.append(ProbeItem("email", f"{lead} {local}", "@", alts, group="at"))
        else:
            tld = tlds[int(rng.integers(len(tlds)))]
            alts = tuple(_pick(rng, not_tlds, 3, exclude=set(tlds)))
            prompt = f"{lead} {local}@{domain}."
            items.append(ProbeItem("email", prompt, tld, alts, group="tld"))
    return items


def _induction(rng, words, n, lo=8, hi=16) -> list[ProbeItem]:
    """Random word sequences repeated: prompt = seq + seq[:j], answer seq[j]."""
    words = list(dict.fromkeys(words))
    items = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        seq = [
            words[i] for i in rng.choice(len(words), size=min(length, len(words)), replace=False)
        ]
        j = int(rng.integers(2, len(seq)))
        first = " ".join(seq)
        prompt = first + " " + " ".join(seq[:j])
        alts = tuple(" " + w for w in _pick(rng, seq, 3, exclude={seq[j]}))
        items.append(
            ProbeItem("induction", prompt, " " + seq[j], alts, group="all", first_copy=first)
        )
    return items


def _capitalisation(rng, sentences, marks, starters, n, group_by_mark=True) -> list[ProbeItem]:
    items = []
    for _ in range(n):
        sent = sentences[int(rng.integers(len(sentences)))]
        mark = marks[int(rng.integers(len(marks)))]
        w = starters[int(rng.integers(len(starters)))]
        cap, low = w[:1].upper() + w[1:], w[:1].lower() + w[1:]
        if cap == low:
            continue
        group = f"after {mark}" if group_by_mark else "all"
        items.append(ProbeItem("capitalisation", sent + mark, " " + cap, (" " + low,), group))
    return items


def _fact_items(facts: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> list[ProbeItem]:
    """facts: {entity, relation, attribute, phrasings_train, phrasings_heldout}."""
    items = []
    by_rel: dict[str, list[str]] = {}
    for f in facts:
        by_rel.setdefault(str(f.get("relation", "")), []).append(str(f["attribute"]))
    all_attrs = [str(f["attribute"]) for f in facts]
    for f in facts:
        attr = str(f["attribute"])
        pool = by_rel[str(f.get("relation", ""))]
        alts = _pick(rng, pool, 3, exclude={attr})
        if len(alts) < 3:
            alts += _pick(rng, all_attrs, 3 - len(alts), exclude={attr, *alts})
        for group, key in (("seen", "phrasings_train"), ("heldout", "phrasings_heldout")):
            for template in f.get(key, []):
                split = fact_prompt(template, str(f["entity"]), attr)
                if split is None or not alts:
                    continue
                prompt, sep = split
                items.append(
                    ProbeItem(
                        "facts",
                        prompt,
                        sep + attr,
                        tuple(sep + a for a in alts),
                        group=group,
                        meta={"entity": f["entity"], "template": template},
                    )
                )
    return items


def fact_prompt(template: str, entity: str, attribute: str) -> tuple[str, str] | None:
    """Cut a phrasing at `{attribute}`: returns (prompt with the entity filled in, the
    separator that precedes the attribute: ' ' or ''), or None when the entity does not come
    before the attribute (nothing to recall from)."""
    cut = template.find("{attribute}")
    if cut < 0 or template.find("{entity}") < 0 or template.find("{entity}") > cut:
        return None
    head = template[:cut]
    sep = " " if head.endswith(" ") else ""
    prompt = head.rstrip(" ").replace("{entity}", entity)
    return (prompt, sep) if prompt else None


def freq_bucket(count: int) -> str:
    """Train-count bucket, the corpus's convention: '0', else '1e{k}' for [10^k, 10^(k+1))."""
    return "0" if count <= 0 else f"1e{len(str(int(count))) - 1}"


def _split_last_word(text: str, strip: str) -> tuple[str, str] | None:
    text = text.strip().rstrip(strip).rstrip()
    if " " not in text:
        return None
    head, last = text.rsplit(" ", 1)
    return head, " " + last


def _phrase_items(phrases, rng, strip: str, extra_words: Sequence[str]) -> list[ProbeItem]:
    """phrases: (text, group) pairs; the last word is the answer."""
    splits = [(_split_last_word(t, strip), g) for t, g in phrases]
    lasts = [s[1] for s, _ in splits if s is not None]
    items = []
    for split, group in splits:
        if split is None:
            continue
        head, last = split
        alts = _pick(rng, lasts, 3, exclude={last})
        if len(alts) < 3:
            alts += _pick(rng, [" " + w for w in extra_words], 3 - len(alts), {last, *alts})
        if alts:
            items.append(ProbeItem("memorised", head, last, tuple(alts), group=group))
    return items


def _acronym_items(pairs, rng, letter_pool: str) -> list[ProbeItem]:
    """pairs: (name, acronym). The prompt is `Name (` (as the corpus introduces acronyms);
    the correct option is `ACR)`. One item per letter position k: each wrong option changes
    letter k only (to another initial of the name or a letter of `letter_pool`), so the
    margin at group `letter{k+1}` measures knowing that letter."""
    items = []
    for name, acr in pairs:
        for k, nxt in enumerate(acr):
            initials = [w[0].upper() for w in name.split()]
            wrong = _pick(rng, initials, 3, exclude={nxt})
            if len(wrong) < 3:
                wrong += _pick(rng, list(letter_pool), 3 - len(wrong), exclude={nxt, *wrong})
            alts = tuple(f"{acr[:k]}{w}{acr[k + 1 :]})" for w in wrong)
            items.append(ProbeItem("acronyms", f"{name} (", f"{acr})", alts, f"letter{k + 1}"))
    return items


# --------------------------------------------------------------------------- planted source

_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "punctuation": ("languages", "default_language", "sentence_end"),
    "brackets": ("languages", "default_language", "brackets"),
    "capitalisation": ("languages", "default_language", "sentence_end"),
    "email": ("languages", "default_language", "tlds", "email_domains", "sentence_end"),
    "language": ("languages",),
    "memorised": ("phrases", "languages", "default_language"),
    "acronyms": ("acronyms",),
    "induction": ("languages", "default_language"),
    "facts": ("facts",),
}


def _lexicon(gt: Mapping[str, Any], language: str | None = None) -> list[str]:
    lang = language or gt["default_language"]
    words = [str(w) for w in gt["languages"][lang]["lexicon"]]
    return list(dict.fromkeys(w for w in words if w and " " not in w))


def _classes(gt: Mapping[str, Any], language: str | None = None) -> dict[str, list[str]]:
    """Word classes of a language (det, prep, conj, noun, verb, adj); without `word_classes`
    in the ground truth every class is the whole lexicon."""
    lang = language or gt["default_language"]
    spec = gt["languages"][lang]
    lex = _lexicon(gt, lang)
    given = spec.get("word_classes") or {}
    return {c: [str(w) for w in given.get(c) or lex] for c in CLASSES}


CLASSES = ("det", "prep", "conj", "noun", "verb", "adj")


def _clause(rng: np.random.Generator, classes: Mapping[str, Sequence[str]]) -> list[str]:
    """A complete clause as the corpus writes them: det noun verb det noun (+ prep det noun
    half the time); the first word capitalised."""

    def w(c: str) -> str:
        return classes[c][int(rng.integers(len(classes[c])))]

    words = [w("det"), w("noun"), w("verb"), w("det"), w("noun")]
    if rng.random() < 0.5:
        words += [w("prep"), w("det"), w("noun")]
    words[0] = words[0].capitalize()
    return words


def planted_probes(
    ground_truth: Mapping[str, Any],
    n_per_behaviour: int,
    seed: int,
    behaviours: Iterable[str] | str | None = None,
) -> list[ProbeItem]:
    """Probes from the mini-suite corpus's planted structure (`ground_truth.json`).

    Keys used: languages (name -> lexicon, letters, optional word_classes),
    default_language, sentence_end, brackets ([open, close] pairs), tlds, email_domains,
    acronyms ({name, acronym}), phrases ({id, text, train_count}), facts ({entity,
    relation, attribute, phrasings_train, phrasings_heldout}). Texts follow the corpus's
    formats (`Name (ACR)`, `(noun noun [noun`, ` local@domain.tld`, phrases and facts as
    their own sentences). At most `n_per_behaviour` items per behaviour.
    """
    names = check_behaviours(behaviours)
    missing = sorted({k for b in names for k in _REQUIRED_KEYS[b] if k not in ground_truth})
    if missing:
        raise SeedscopeError(
            f"The ground truth lacks {', '.join(missing)}.",
            "rebuild the corpus (stage `corpus`) or ask only for behaviours it supports.",
        )
    gt = ground_truth
    n = int(n_per_behaviour)
    out: list[ProbeItem] = []
    for b in names:
        rng = _rng(seed, b)
        marks = [str(m) for m in gt.get("sentence_end", [])]
        words = _lexicon(gt) if "default_language" in gt else []
        cls = _classes(gt) if "default_language" in gt else {}
        if b == "punctuation":
            # after a complete clause the sentence may end; a determiner or a verb may not
            # follow the object noun in the corpus's grammar
            items = []
            for _ in range(n):
                alts = (" " + _pick(rng, cls["det"], 1)[0], " " + _pick(rng, cls["verb"], 1)[0])
                prompt = " ".join(_clause(rng, cls))
                items.append(ProbeItem(b, prompt, marks[0], alts, group="clause_end"))
        elif b == "capitalisation":
            sents = [" ".join(_clause(rng, cls)) for _ in range(max(n, 1))]
            items = _capitalisation(rng, sents, marks, cls["det"] + cls["noun"], n)
        elif b == "brackets":
            pairs = [tuple(map(str, p)) for p in gt["brackets"]]
            items = [
                ProbeItem(
                    b,
                    " ".join(_clause(rng, cls)[:3]) + " " + it.prompt,
                    it.correct,
                    it.alternatives,
                    it.group,
                )  # fmt: skip
                for it in _brackets(rng, cls["noun"], pairs, n)
            ]
        elif b == "email":
            at_alts = [m for m in marks if m != "."] + [str(p[0]) for p in gt.get("brackets", [])]
            content = words[16:600] or words
            locals_ = []
            for _ in range(200):
                parts = _pick(rng, content, int(rng.integers(1, 3)))
                local = ("." if rng.random() < 0.5 else "_").join(parts)
                locals_.append(
                    local + (str(int(rng.integers(1, 100))) if rng.random() < 0.3 else "")
                )
            leads = [" ".join(_clause(rng, cls)[:3]) for _ in range(20)]
            doms = [str(d) for d in gt["email_domains"]]
            not_tlds = _pick(rng, content, 50)
            items = _emails(rng, leads, locals_, doms, gt["tlds"], not_tlds, at_alts[:3], n)
        elif b == "induction":
            items = _induction(rng, words, n)
        elif b == "language":
            items = _planted_language(gt, rng, n)
        elif b == "memorised":
            phrases = [(str(p["text"]), freq_bucket(int(p["train_count"]))) for p in gt["phrases"]]
            strip = "".join(marks) + ","
            items = _sample(rng, _phrase_items(phrases, rng, strip, words), n)
        elif b == "acronyms":
            pairs = [(str(a["name"]), str(a["acronym"])) for a in gt["acronyms"]]
            pool = "".join(sorted({ch for _, a in pairs for ch in a})) or "ABCDEFGHIJKLMNOPRSTUVW"
            items = _sample(rng, _acronym_items(pairs, rng, pool), n)
        else:  # facts
            items = _sample(rng, _fact_items(gt["facts"], rng), n)
        out.extend(items[:n])
    return out


def _exclusive_words(lexicons: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Per language, the lexicon words that no other language has."""
    out = {}
    for lang, words in lexicons.items():
        others = {w.lower() for o, ws in lexicons.items() if o != lang for w in ws}
        out[lang] = [w for w in dict.fromkeys(words) if w.lower() not in others]
    return out


def _planted_language(gt, rng, n) -> list[ProbeItem]:
    """A clause prefix in language L; the answer is the clause's next word, each wrong
    option a word of the same class from another language (lexicons are disjoint)."""
    langs = list(gt["languages"])
    if len(langs) < 2:
        return []
    cls = {lang: _classes(gt, lang) for lang in langs}
    items = []
    for i in range(n):
        lang = langs[i % len(langs)]
        # classes of the clause det noun verb det noun prep det noun, position by position
        kinds = ["det", "noun", "verb", "det", "noun", "prep", "det", "noun"]
        j = int(rng.integers(3, len(kinds)))
        words = [cls[lang][k][int(rng.integers(len(cls[lang][k])))] for k in kinds[: j + 1]]
        words[0] = words[0].capitalize()
        alts = tuple(" " + _pick(rng, cls[o][kinds[j]], 1)[0] for o in langs if o != lang)
        items.append(ProbeItem("language", " ".join(words[:j]), " " + words[j], alts, lang, lang))
    return items


# --------------------------------------------------------------------------- English source


@cache
def load_probe_data(name: str) -> dict[str, Any]:
    """One packaged YAML file under `probes/` (facts, phrases, acronyms, language, templates)."""
    import yaml

    path = PROBES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROBES_DIR.glob("*.yaml"))
        raise SeedscopeError(f"No probe file {path.name}.", f"use one of: {', '.join(known)}.")
    return yaml.safe_load(path.read_text())


def english_lexicons() -> dict[str, list[str]]:
    """Language name -> lexicon of the English-source language probes."""
    data = load_probe_data("language")
    return {k: [str(w) for w in v["lexicon"]] for k, v in data["languages"].items()}


def english_probes(
    n_per_behaviour: int, seed: int, behaviours: Iterable[str] | str | None = None
) -> list[ProbeItem]:
    """Probes for GPT-2-tokenizer suites from the packaged English templates (`probes/*.yaml`).

    Seen/heldout fact phrasings and phrase frequency buckets are the project's proxies
    (common vs unusual phrasing; judged idiom frequency): hub suites' data is not counted.
    """
    names = check_behaviours(behaviours)
    tpl = load_probe_data("templates")
    lang = load_probe_data("language")
    english = lang["languages"]["english"]
    statements = [str(s) for s in english["sentences"]]
    lexicon = [str(w) for w in english["lexicon"]]
    out: list[ProbeItem] = []
    for b in names:
        rng = _rng(seed, b)
        n = int(n_per_behaviour)
        if b == "punctuation":
            facts = load_probe_data("facts")["facts"]
            stated = statements + [f"The capital of {e} is {c}" for e, c in facts]
            asked = list(tpl["questions"]) + [f"What is the capital of {e}" for e, _ in facts]
            pool = [ProbeItem(b, s, ".", ("?", ","), group="statement") for s in stated]
            pool += [ProbeItem(b, q, "?", (".", ","), group="question") for q in asked]
            items = _sample(rng, pool, n)
        elif b == "capitalisation":
            starters = [str(s) for s in tpl["sentence_starters"]]
            items = _capitalisation(rng, statements, [".", "!", "?"], starters, n)
        elif b == "brackets":
            pairs = [("(", ")"), ("[", "]"), ("{", "}")]
            items = _brackets(rng, [str(w) for w in tpl["bracket_words"]], pairs, n)
        elif b == "email":
            e = tpl["email"]
            locals_ = list(e["local_first"]) + [
                f"{a}.{c}" for a in e["local_first"][:20] for c in e["local_last"][:5]
            ]
            items = _emails(
                rng, e["lead_ins"], locals_, e["domains"], e["tlds"], e["not_tlds"],
                [",", "!", "?"], n,
            )  # fmt: skip
        elif b == "induction":
            items = _induction(rng, lexicon, n)
        elif b == "language":
            items = _sample(rng, _english_language_pool(lang, rng), n)
        elif b == "memorised":
            data = load_probe_data("phrases")
            phrases = [(str(t), bucket) for bucket, ts in data["buckets"].items() for t in ts]
            items = _sample(rng, _phrase_items(phrases, rng, ".!?,", lexicon), n)
        elif b == "acronyms":
            pairs = [(str(a), str(c)) for a, c in load_probe_data("acronyms")["acronyms"]]
            items = _sample(rng, _acronym_items(pairs, rng, "ABCDEFGHIJKLMNOPRSTUVW"), n)
        else:  # facts
            data = load_probe_data("facts")
            facts = [
                {
                    "entity": str(e),
                    "relation": data["relation"],
                    "attribute": str(a),
                    "phrasings_train": data["phrasings_train"],
                    "phrasings_heldout": data["phrasings_heldout"],
                }
                for e, a in data["facts"]
            ]
            items = _sample(rng, _fact_items(facts, rng), n)
        out.extend(items[:n])
    return out


def _english_language_pool(data, rng) -> list[ProbeItem]:
    """Every sentence prefix of >= 3 words; answer = the sentence's next word; one wrong word
    per other language (a word exclusive to that language's lexicon)."""
    langs = data["languages"]
    lex = {k: [str(w) for w in v["lexicon"]] for k, v in langs.items()}
    excl = _exclusive_words(lex)
    pool = []
    for lang, spec in langs.items():
        for sent in spec["sentences"]:
            words = str(sent).split()
            for j in range(3, len(words)):
                ans = words[j]
                alts = [
                    " " + w
                    for o in langs
                    if o != lang
                    for w in _pick(rng, excl[o], 1, exclude={ans, ans.lower()})
                ]
                pool.append(
                    ProbeItem("language", " ".join(words[:j]), " " + ans, tuple(alts), lang, lang)
                )
    return pool


def probes_for(
    source: str,
    n_per_behaviour: int,
    seed: int,
    ground_truth: Mapping[str, Any] | None = None,
    behaviours: Iterable[str] | str | None = None,
) -> list[ProbeItem]:
    """Probe items from `source` ('planted' needs `ground_truth`; 'english' needs nothing)."""
    if source not in SOURCES:
        raise SeedscopeError(
            f"Unknown probe source {source!r}.{closest(str(source), SOURCES)}",
            f"use one of: {', '.join(SOURCES)}.",
        )
    if source == "planted":
        if ground_truth is None:
            raise SeedscopeError(
                "Planted probes need the corpus ground truth.",
                "pass ground_truth=read_json(corpus_dir() / 'ground_truth.json').",
            )
        return planted_probes(ground_truth, n_per_behaviour, seed, behaviours)
    return english_probes(n_per_behaviour, seed, behaviours)


def language_lexicons(source: str, ground_truth: Mapping[str, Any] | None = None):
    """(lexicons, letters) for `language_token_map`, from either source."""
    if source == "english":
        return english_lexicons(), None
    if ground_truth is None:
        raise SeedscopeError("Planted lexicons need the ground truth.", "pass ground_truth.")
    langs = ground_truth["languages"]
    lexicons = {k: [str(w) for w in v["lexicon"]] for k, v in langs.items()}
    letters = {k: str(v["letters"]) for k, v in langs.items() if v.get("letters")}
    return lexicons, (letters or None)


# --------------------------------------------------------------------------- tokenizer helpers


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, for an HF tokenizer or a `tokenizers`
    Tokenizer."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(enc.ids) if hasattr(enc, "ids") else list(enc)


def _special_ids(tokenizer: Any) -> set[int]:
    if hasattr(tokenizer, "all_special_ids"):
        return set(tokenizer.all_special_ids)
    if hasattr(tokenizer, "get_added_tokens_decoder"):
        return set(tokenizer.get_added_tokens_decoder())
    return set()


def _vocab_size(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    return max(vocab.values()) + 1 if vocab else 0


def language_token_map(
    tokenizer: Any,
    lexicons: Mapping[str, Sequence[str]],
    letters: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Language -> sorted token ids that belong to that language only.

    A token belongs to language L when it is the first token of a word of L's lexicon
    (encoded with and without a leading space, lower- and capitalised), or, when `letters`
    are given, when all its letters are in L's alphabet. Tokens claimed by several
    languages, and special tokens, belong to none.
    """
    claims: dict[int, set[str]] = {}
    for lang, words in lexicons.items():
        for w in words:
            for v in {w, w[:1].upper() + w[1:]}:
                for text in (v, " " + v):
                    ids = encode(tokenizer, text)
                    if ids:
                        claims.setdefault(ids[0], set()).add(lang)
    if letters:
        sets = {k: set(v) for k, v in letters.items()}
        for tok_id in range(_vocab_size(tokenizer)):
            chars = {ch for ch in tokenizer.decode([tok_id]) if ch.isalpha()}
            owners = [k for k, s in sets.items() if chars and chars <= s]
            if len(owners) == 1:
                claims.setdefault(tok_id, set()).add(owners[0])
    special = _special_ids(tokenizer)
    out: dict[str, list[int]] = {lang: [] for lang in lexicons}
    for tok_id, langs in claims.items():
        if len(langs) == 1 and tok_id not in special:
            out[next(iter(langs))].append(tok_id)
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


# --------------------------------------------------------------------------- scoring


def _forward_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float()


def score_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[ProbeItem],
    batch_size: int = 16,
    device: str = "cpu",
    language_map: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Score every option of every item by the model's log-prob; one row per item.

    Each option is scored as `sum_t log p(option token t | prompt, option tokens < t)`, the
    prompt and option encoded separately and concatenated (ids `[n_prompt + n_option]`);
    the logits at position i predict token i + 1 (next-token off-by-one). All
    (item, option) sequences are batched, padded right with an attention mask.

    Columns: item, behaviour, group, language, prompt, correct_option, logp_options (list,
    correct first), logp_correct, logp_best_wrong, margin (= logp_correct -
    logp_best_wrong), correct (strictly better than every alternative), n_option_tokens;
    `lang_mass` / `lang_share` (language items with a `language_map`: probability of the
    next token being one of the prompt language's tokens / that mass over all languages'
    tokens); `first_copy_loss`, `second_copy_loss`, `induction_gain` (induction items: mean
    NLL in nats over the first copy's tokens 1.. and over the second copy's tokens after
    its first, answer included; gain = first - second).
    """
    rows = []  # (item index, option index, ids, n_prompt)
    n_first: dict[int, int] = {}
    for i, item in enumerate(items):
        if item.behaviour not in BEHAVIOURS:
            check_behaviours([item.behaviour])
        if not item.alternatives:
            raise SeedscopeError(f"Probe {item.prompt!r} has no alternatives.", "add some.")
        p_ids = encode(tokenizer, item.prompt)
        if not p_ids:
            raise SeedscopeError(f"Probe prompt {item.prompt!r} has no tokens.", "fix it.")
        for j, opt in enumerate(item.options):
            o_ids = encode(tokenizer, opt)
            if not o_ids:
                raise SeedscopeError(f"Option {opt!r} has no tokens.", "use non-empty options.")
            rows.append((i, j, p_ids + o_ids, len(p_ids)))
        if item.first_copy is not None:
            f_ids = encode(tokenizer, item.first_copy)
            if p_ids[: len(f_ids)] == f_ids:
                n_first[i] = len(f_ids)
    max_pos = getattr(getattr(model, "config", None), "n_positions", None)
    longest = max((len(r[2]) for r in rows), default=0)
    if max_pos is not None and longest > max_pos:
        raise SeedscopeError(
            f"A probe is {longest} tokens long; the model takes at most {max_pos}.",
            "use shorter probes.",
        )

    logp = np.full((len(items), max((len(it.options) for it in items), default=0)), np.nan)
    n_opt_tokens = np.zeros(len(items), dtype=np.int64)
    lang_mass = np.full(len(items), np.nan)
    lang_share = np.full(len(items), np.nan)
    first_loss = np.full(len(items), np.nan)
    second_loss = np.full(len(items), np.nan)
    lang_ids = (
        {k: torch.as_tensor(v, dtype=torch.long) for k, v in language_map.items()}
        if language_map is not None
        else None
    )
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][2]))
    pad = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            width = max(len(r[2]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (_, _, seq, _) in enumerate(batch):
                ids[b, : len(seq)] = torch.as_tensor(seq)
                mask[b, : len(seq)] = 1
            logits = _forward_logits(model, ids.to(device), mask.to(device)).cpu()
            # token log-probs: position t predicts token t + 1 -> [batch, width - 1]
            norm = torch.logsumexp(logits[:, :-1], dim=-1)
            tok_lp = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] - norm
            for b, (i, j, seq, n_p) in enumerate(batch):
                lp = tok_lp[b, : len(seq) - 1].double().numpy()
                logp[i, j] = lp[n_p - 1 :].sum()
                if j != 0:
                    continue
                n_opt_tokens[i] = len(seq) - n_p
                item = items[i]
                if lang_ids is not None and item.language in lang_ids:
                    probs = torch.softmax(logits[b, n_p - 1].double(), dim=-1)
                    masses = {k: float(probs[v].sum()) for k, v in lang_ids.items()}
                    lang_mass[i] = masses[item.language]
                    total = sum(masses.values())
                    lang_share[i] = masses[item.language] / total if total > 0 else np.nan
                if i in n_first and n_first[i] >= 2 and len(seq) - n_first[i] >= 2:
                    nf = n_first[i]
                    first_loss[i] = -lp[: nf - 1].mean()  # predicts tokens 1 .. nf-1
                    second_loss[i] = -lp[nf:].mean()  # predicts tokens nf+1 .. end
    wrong = np.where(np.isnan(logp[:, 1:]), -np.inf, logp[:, 1:])
    best_wrong = wrong.max(axis=1) if len(items) else np.zeros(0)
    frame = pd.DataFrame(
        {
            "item": np.arange(len(items)),
            "behaviour": [it.behaviour for it in items],
            "group": [it.group for it in items],
            "language": [it.language for it in items],
            "prompt": [it.prompt for it in items],
            "correct_option": [it.correct for it in items],
            "logp_options": [list(row[~np.isnan(row)]) for row in logp],
            "logp_correct": logp[:, 0] if len(items) else np.zeros(0),
            "logp_best_wrong": best_wrong,
            "margin": (logp[:, 0] - best_wrong) if len(items) else np.zeros(0),
            "correct": (logp[:, 0] > best_wrong) if len(items) else np.zeros(0, dtype=bool),
            "n_option_tokens": n_opt_tokens,
            "lang_mass": lang_mass,
            "lang_share": lang_share,
            "first_copy_loss": first_loss,
            "second_copy_loss": second_loss,
            "induction_gain": first_loss - second_loss,
        }
    )
    return frame


def metrics_for(behaviour: str) -> tuple[str, ...]:
    """Metrics reported for a behaviour: accuracy, margin, plus its own."""
    return ("accuracy", "margin", *EXTRA_METRICS.get(behaviour, ()))


def summarise(
    scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Behaviour x group x metric: value (item mean), ci_low, ci_high (item-bootstrap
    percentile CI), n (items). Group 'all' pools a behaviour's groups. accuracy is the
    fraction of items whose correct option wins; margin is in nats."""
    from seedscope.stats import bootstrap_mean

    out = []
    for behaviour, frame in scores.groupby("behaviour", sort=False):
        parts = [("all", frame)]
        if frame["group"].nunique() > 1 or frame["group"].iloc[0] != "all":
            parts += list(frame.groupby("group", sort=True))
        for group, part in parts:
            for metric in metrics_for(str(behaviour)):
                col = "correct" if metric == "accuracy" else metric
                vals = part[col].to_numpy(dtype=np.float64)
                vals = vals[np.isfinite(vals)]
                if vals.size == 0:
                    continue
                res = bootstrap_mean(vals[:, None], n_boot=n_boot if vals.size > 1 else 0,
                                     seed=seed, ci=ci)  # fmt: skip
                est, low, high = res.as_tuple()
                out.append((behaviour, str(group), metric, est, low, high, int(vals.size)))
    cols = ["behaviour", "group", "metric", "value", "ci_low", "ci_high", "n"]
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------- over runs / steps


def behaviour_table(
    scores: pd.DataFrame | Mapping[tuple[str, int], pd.DataFrame],
    suite: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    groups: bool = False,
) -> pd.DataFrame:
    """Tidy behaviour x run x step x metric table (value, ci_low, ci_high, n).

    scores: concatenated `score_items` frames with `run` and `step` columns, or a mapping
    (run, step) -> frame. `groups=False` keeps only group 'all'. With a `suite`, adds the
    run's seed, size and label.
    """
    if isinstance(scores, Mapping):
        scores = pd.concat(
            [f.assign(run=r, step=int(s)) for (r, s), f in scores.items()], ignore_index=True
        )
    for col in ("run", "step"):
        if col not in scores.columns:
            raise SeedscopeError(
                f"The scores have no `{col}` column.",
                "concatenate score_items frames with run and step columns added.",
            )
    parts = []
    for (run, step), frame in scores.groupby(["run", "step"], sort=True):
        summ = summarise(frame, n_boot=n_boot, seed=seed)
        if not groups:
            summ = summ[summ["group"] == "all"]
        parts.append(summ.assign(run=run, step=int(step)))
    table = pd.concat(parts, ignore_index=True) if parts else summarise(scores.iloc[:0])
    if suite is not None:
        info = pd.DataFrame(
            [(r.name, r.seed, r.size, r.label) for r in suite.runs],
            columns=["run", "seed", "size", "label"],
        )
        table = table.merge(info, on="run", how="left")
    first = ["behaviour", "run", "step", "group", "metric"]
    return table[first + [c for c in table.columns if c not in first]]


def emergence_step(
    steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray, threshold: float
) -> int | None:
    """The first checkpoint from which the metric is >= threshold at every later checkpoint
    (a curve that dips back below restarts the search), or None if the last checkpoint is
    below. NaN values (missing checkpoints) are skipped."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    if steps.shape != values.shape:
        raise SeedscopeError(
            f"steps {steps.shape} and values {values.shape} differ in shape.", "pair them."
        )
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    if values.size == 0 or values[-1] < threshold:
        return None
    below = np.flatnonzero(values < threshold)
    first = 0 if below.size == 0 else below[-1] + 1
    return int(steps[first])


def emergence_table(
    table: pd.DataFrame,
    thresholds: Mapping[str, float],
    metric: str = "accuracy",
    group: str = "all",
) -> pd.DataFrame:
    """Emergence step per behaviour x run: columns behaviour, run, (seed, size, label),
    metric, threshold, emergence_step (NaN = never stays above), final_value."""
    unknown = [b for b in thresholds if b not in BEHAVIOURS]
    if unknown:
        check_behaviours(unknown)
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    extra = [c for c in ("seed", "size", "label") if c in sub.columns]
    rows = []
    for (behaviour, run), frame in sub.groupby(["behaviour", "run"], sort=False):
        if behaviour not in thresholds:
            continue
        frame = frame.sort_values("step")
        step = emergence_step(frame["step"], frame["value"], thresholds[behaviour])
        row = {"behaviour": behaviour, "run": run}
        row.update({c: frame[c].iloc[0] for c in extra})
        row.update(
            metric=metric,
            threshold=float(thresholds[behaviour]),
            emergence_step=np.nan if step is None else float(step),
            final_value=float(frame["value"].iloc[-1]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def emergence_spread(
    emergence: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Spread of emergence steps across seeds, per behaviour x size (size 'all' pools sizes):
    mean, sd (ddof=1), min, max, range, a CI for the mean from resampling runs (seeds) with
    replacement (the seed half of the multi-bootstrap), n_emerged and n_runs (runs that never
    emerge are counted in n_runs but not in the statistics)."""
    from seedscope.stats import bootstrap_mean

    size_col = "size" if "size" in emergence.columns else None
    rows = []
    for behaviour, frame in emergence.groupby("behaviour", sort=False):
        parts = [("all", frame)]
        if size_col:
            parts += [(str(s), f) for s, f in frame.groupby(size_col, sort=False)]
        for size, part in parts:
            steps = part["emergence_step"].to_numpy(dtype=np.float64)
            done = steps[np.isfinite(steps)]
            row = {"behaviour": behaviour, "size": size, "n_runs": len(steps),
                   "n_emerged": int(done.size)}  # fmt: skip
            if done.size:
                res = bootstrap_mean(done[:, None], n_boot=n_boot if done.size > 1 else 0,
                                     seed=seed, ci=ci)  # fmt: skip
                row.update(
                    mean=float(done.mean()),
                    sd=float(done.std(ddof=1)) if done.size > 1 else np.nan,
                    min=float(done.min()),
                    max=float(done.max()),
                    range=float(done.max() - done.min()),
                    ci_low=float(res.low),
                    ci_high=float(res.high),
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _nearest_step(steps: np.ndarray, target: int) -> int:
    return int(steps[np.argmin(np.abs(steps - target))])


def seed_spread_mid_vs_final(
    table: pd.DataFrame,
    mid_step: int,
    final_step: int,
    metric: str = "accuracy",
    group: str = "all",
) -> pd.DataFrame:
    """Which behaviours differ most between seeds at mid-training vs at the end: per
    behaviour (x size when the table has sizes), sd (ddof=1) and range of the metric across
    runs at the checkpoint nearest `mid_step` and at the one nearest `final_step`, and
    sd_ratio = sd_mid / sd_final. Sorted by sd_mid, largest first."""
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    keys = ["behaviour"] + (["size"] if "size" in sub.columns else [])
    rows = []
    for key, frame in sub.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        for label, target in (("mid", mid_step), ("final", final_step)):
            vals = []
            for _, run_frame in frame.groupby("run", sort=False):
                steps = run_frame["step"].to_numpy()
                s = _nearest_step(steps, target)
                vals.append(float(run_frame.loc[run_frame["step"] == s, "value"].iloc[0]))
            arr = np.array(vals)
            row[f"mean_{label}"] = float(arr.mean())
            row[f"sd_{label}"] = float(arr.std(ddof=1)) if arr.size > 1 else np.nan
            row[f"range_{label}"] = float(arr.max() - arr.min())
        with np.errstate(divide="ignore", invalid="ignore"):
            row["sd_ratio"] = row["sd_mid"] / row["sd_final"] if row["sd_final"] else np.inf
        row["n_runs"] = len(vals)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("sd_mid", ascending=False, ignore_index=True) if len(out) else out


# --------------------------------------------------------------------------- figures


def _run_labels(frame: pd.DataFrame) -> dict[str, str]:
    if "label" in frame.columns:
        return dict(zip(frame["run"], frame["label"], strict=False))
    if "seed" in frame.columns:
        return {r: f"{r} (seed {s})" for r, s in zip(frame["run"], frame["seed"], strict=False)}
    return {r: str(r) for r in frame["run"]}


_METRIC_UNITS = {
    "accuracy": "accuracy (fraction correct)",
    "margin": "log-prob margin (nats)",
    "lang_mass": "same-language next-token mass (probability)",
    "lang_share": "same-language share of language-token mass",
    "induction_gain": "first-copy minus second-copy loss (nats/token)",
}


def plot_behaviour_heatmap(
    table: pd.DataFrame,
    behaviour: str,
    metric: str = "accuracy",
    group: str = "all",
    run_order: Sequence[str] | None = None,
):
    """Heatmap of one behaviour's metric, runs (labelled with seeds) x checkpoints."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    check_behaviours([behaviour])
    sub = table[
        (table["behaviour"] == behaviour) & (table["metric"] == metric) & (table["group"] == group)
    ]
    if sub.empty:
        raise SeedscopeError(
            f"No {metric!r} values for behaviour {behaviour!r} (group {group!r}).",
            "score this behaviour first, or pick a metric the table has.",
        )
    grid = sub.pivot_table(index="run", columns="step", values="value", aggfunc="mean")
    order = [r for r in (run_order or list(dict.fromkeys(sub["run"]))) if r in grid.index]
    grid = grid.loc[order]
    labels = _run_labels(sub)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * grid.shape[1] + 3), 0.45 * len(order) + 1.6))
    sns.heatmap(
        grid.to_numpy(),
        ax=ax,
        cmap="viridis",
        cbar_kws={"label": _METRIC_UNITS.get(metric, metric)},
        vmin=0.0 if metric in ("accuracy", "lang_mass", "lang_share") else None,
        vmax=1.0 if metric in ("accuracy", "lang_mass", "lang_share") else None,
    )
    n_ticks = min(grid.shape[1], 12)
    pos = np.unique(np.linspace(0, grid.shape[1] - 1, n_ticks).round().astype(int))
    ax.set_xticks(pos + 0.5)
    ax.set_xticklabels([str(grid.columns[p]) for p in pos], rotation=45, ha="right")
    ax.set_yticks(np.arange(len(order)) + 0.5)
    ax.set_yticklabels([labels.get(r, r) for r in order], rotation=0)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("run")
    ax.set_title(f"{behaviour}: {metric} over training, per run")
    fig.tight_layout()
    return fig


def plot_emergence(emergence: pd.DataFrame, run_order: Sequence[str] | None = None):
    """Dot plot: emergence step per behaviour (rows), one dot per run (colour = run); runs
    that never stay above threshold are listed in the title."""
    import matplotlib.pyplot as plt

    from seedscope.plots import run_colors

    runs = list(run_order or dict.fromkeys(emergence["run"]))
    colors = run_colors(runs)
    labels = _run_labels(emergence)
    behaviours = [b for b in BEHAVIOURS if b in set(emergence["behaviour"])]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(behaviours) + 1.8))
    offsets = np.linspace(-0.25, 0.25, max(len(runs), 1))
    for k, run in enumerate(runs):
        part = emergence[emergence["run"] == run].set_index("behaviour")
        y = [behaviours.index(b) + offsets[k] for b in part.index if b in behaviours]
        x = [part.loc[b, "emergence_step"] for b in part.index if b in behaviours]
        ax.scatter(x, y, color=colors[run], label=labels.get(run, run), s=28, zorder=3)
    ax.set_yticks(range(len(behaviours)))
    ax.set_yticklabels(behaviours)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("emergence step (training steps, symlog scale)")
    ax.set_ylabel("behaviour")
    never = emergence[emergence["emergence_step"].isna()]
    title = "Emergence step per behaviour and run"
    if len(never):
        title += f" ({len(never)} run x behaviour pairs never stay above threshold)"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title="run")
    fig.tight_layout()
    return fig


def plot_size_comparison(table: pd.DataFrame, metric: str = "accuracy", group: str = "all"):
    """Per behaviour, the metric over training per size: mean over seeds (line) and the
    min-max band across seeds."""
    import matplotlib.pyplot as plt

    from seedscope.plots import size_colors

    if "size" not in table.columns:
        raise SeedscopeError("The table has no `size` column.", "build it with suite=...")
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    behaviours = [b for b in BEHAVIOURS if b in set(sub["behaviour"])]
    sizes = list(dict.fromkeys(sub["size"]))
    colors = size_colors(sizes)
    ncol = min(3, max(len(behaviours), 1))
    nrow = int(np.ceil(len(behaviours) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, behaviour in zip(axes.flat, behaviours, strict=False):
        part = sub[sub["behaviour"] == behaviour]
        for size in sizes:
            g = part[part["size"] == size].groupby("step")["value"].agg(["mean", "min", "max"])
            ax.plot(g.index, g["mean"], color=colors[size], label=f"{size} (mean of seeds)")
            ax.fill_between(g.index, g["min"], g["max"], color=colors[size], alpha=0.2)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_title(behaviour)
        ax.set_xlabel("training step (symlog)")
        ax.set_ylabel(_METRIC_UNITS.get(metric, metric))
    for ax in list(axes.flat)[len(behaviours) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{metric} by model size: mean over seeds, band = min-max across seeds")
    fig.tight_layout()
    return fig


def bracket_depth(prompt: str, pairs: Sequence[Sequence[str]]) -> list[str] | None:
    """The stack of unclosed brackets of `prompt` (closes, innermost last), or None if a
    close does not match its open."""
    opens = {o: c for o, c in pairs}
    closes = set(opens.values())
    stack: list[str] = []
    for ch in prompt:
        if ch in opens:
            stack.append(opens[ch])
        elif ch in closes:
            if not stack or stack.pop() != ch:
                return None
    return stack


EMAIL_RE = re.compile(r"[^\s@]+@[^\s@.]+(\.[^\s@.]+)*\.[^\s@.]+$")


def fit_to_context(
    items: Sequence[ProbeItem], tokenizer: Any, max_len: int
) -> tuple[list[ProbeItem], dict[str, int]]:
    """Keep the items whose prompt plus longest option fits `max_len` tokens (the model's
    context); return them and the number dropped per behaviour (reported, never silent)."""
    kept, dropped = [], Counter()
    for item in items:
        n_prompt = len(encode(tokenizer, item.prompt))
        n_option = max(len(encode(tokenizer, opt)) for opt in item.options)
        if n_prompt + n_option <= max_len:
            kept.append(item)
        else:
            dropped[item.behaviour] += 1
    return kept, dict(dropped)
