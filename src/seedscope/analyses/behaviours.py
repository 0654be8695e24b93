"""The behaviour battery: nine probe sets, each a prompt with one correct option and competing
wrong ones, scored by a model's log-probs, tracked over runs and checkpoints.

A probe (`ProbeItem`) comes from one of two sources behind one interface: `planted_probes`
builds them from the mini-suite corpus's `ground_truth.json` (the planted structure is known
exactly), `english_probes` from the packaged YAML templates under `probes/` (for GPT-2/Pythia
tokenizers). Items that share an entity, an acronym or a sentence carry one `cluster`.
`score_items` gives one row per item: every option's summed and per-token log-prob, correct?
under both scorings (one is the headline), and the chance-normalised score (acc - chance) /
(1 - chance) that puts 2- and 4-option behaviours on one scale. `summarise` and
`behaviour_table` aggregate with CIs that resample item clusters; `emergence_table` finds
when a behaviour's CI lower bound crosses one threshold and stays; `emergence_summary`
counts censored runs (k/n, Kaplan-Meier median) per size; `final_scores` gives the final
score per size with a Multi-Bootstrap over seeds x item clusters.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seedscope.analyses.params import BEHAVIOURS  # one list, defined beside the params
from seedscope.core.errors import SeedscopeError, closest
from seedscope.core.io import folder_files
from seedscope.data.corpus import freq_bucket  # the corpus's train-count buckets
from seedscope.logprobs.engine import torch_threads

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

    @property
    def cluster(self) -> str | None:
        """Items sharing a cluster are not independent (one entity's phrasings, one acronym's
        letters, one sentence's prefixes): CIs resample clusters, not items. None = alone."""
        value = self.meta.get("cluster")
        return None if value is None else str(value)


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
        items.append(
            ProbeItem(
                "capitalisation",
                sent + mark,
                " " + cap,
                (" " + low,),
                group,
                meta={"cluster": f"sentence:{sent}"},
            )
        )
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
                        meta={
                            "entity": f["entity"],
                            "template": template,
                            "cluster": f"entity:{f['entity']}",
                        },
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
            items.append(
                ProbeItem(
                    "acronyms",
                    f"{name} (",
                    f"{acr})",
                    alts,
                    f"letter{k + 1}",
                    meta={"cluster": f"acronym:{name}"},
                )
            )
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
                    ProbeItem(
                        "language",
                        " ".join(words[:j]),
                        " " + ans,
                        tuple(alts),
                        lang,
                        lang,
                        meta={"cluster": f"sentence:{sent}"},
                    )
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


SCORINGS: tuple[str, ...] = ("per_token", "summed", "pmi")
# the neutral context of the 'pmi' scoring: a document boundary (GPT-2, Pythia and the
# planted tokenizer all have it)
NEUTRAL_PROMPT = "<|endoftext|>"


def check_scoring(scoring: str) -> str:
    """Validate a scoring name: 'per_token' (mean log-prob per option token), 'summed' or
    'pmi' (summed log-prob given the prompt minus given a neutral prompt)."""
    if scoring not in SCORINGS:
        raise SeedscopeError(
            f"Unknown scoring {scoring!r}.{closest(str(scoring), SCORINGS)}",
            f"use one of: {', '.join(SCORINGS)}.",
        )
    return scoring


def model_context(model: Any) -> int | None:
    """The model's context length (GPT-2: `n_positions`; GPT-NeoX: `max_position_embeddings`),
    or None when its config does not say."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def score_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[ProbeItem],
    batch_size: int = 16,
    device: str = "cpu",
    language_map: Mapping[str, np.ndarray] | None = None,
    scoring: str = "per_token",
    neutral_prompt: str = NEUTRAL_PROMPT,
) -> pd.DataFrame:
    """Score every option of every item by the model's log-prob; one row per item.

    Each option gets two scores: summed, `sum_t log p(option token t | prompt, option tokens
    < t)`, and per-token, that sum over the option's token count. The summed score favours
    short options (every extra token costs log-prob), so options of unequal token length are
    compared fairly only per token. But per token favours long options whose later tokens
    are predictable from their first (the rest of a word), so a third, calibrated score is
    the domain-conditional PMI (Holtzman et al. 2021, "Surface form competition"): the
    summed log-prob given the prompt minus the summed log-prob of the same option tokens
    given `neutral_prompt` (a document boundary by default): what the prompt adds, so an
    option's length and its frequency everywhere cancel. The neutral context is not neutral
    for every form: after a document boundary a word with a leading space is rare, so PMI
    inflates such options (on the smoke suite it takes the learned punctuation behaviour,
    '.' vs ' word', from 98% to 10% right). `scoring` picks which one fills
    `correct`/`margin` (the headline), all three are kept. The prompt and option are encoded separately and concatenated
    (ids `[n_prompt + n_option]`); the logits at position i predict token i + 1 (next-token
    off-by-one). All (item, option) sequences are batched, padded right with a mask.

    Columns: item, behaviour, group, cluster (items that share one are resampled together;
    'item<i>' when alone), language, prompt, correct_option, n_options, chance (= 1 /
    n_options), option_tokens (token count per option, correct first), logp_options (summed,
    list, correct first), logp_options_per_token, logp_options_neutral (summed, given the
    neutral prompt), logp_options_pmi; per scoring s in (summed, per_token, pmi):
    correct_s (strictly better than every alternative), margin_s (correct minus best wrong);
    `correct`, `margin`, logp_correct, logp_best_wrong (of the headline `scoring`), score
    (chance-normalised correctness, (correct - chance) / (1 - chance): 0 = guessing, 1 =
    right; its item mean is the chance-normalised accuracy), n_option_tokens (correct option);
    `lang_mass` / `lang_share` (language items with a `language_map`: probability of the
    next token being one of the prompt language's tokens / that mass over all languages'
    tokens); `first_copy_loss`, `second_copy_loss`, `induction_gain` (induction items: mean
    NLL in nats over the first copy's tokens 1.. and over the second copy's tokens after
    its first, answer included; gain = first - second).
    """
    check_scoring(scoring)
    encoded = _encode_items(tokenizer, items, neutral_prompt)
    _check_context(model, encoded.rows)
    scores = _score_rows(model, items, encoded, batch_size, device, language_map)
    return _item_frame(items, scores, scoring)


# One scored sequence: (item index, option index, ids, n_prompt, neutral?); a neutral row's
# item index is -1 and its option index is the distinct option's index.
_Row = tuple[int, int, list[int], int, bool]


@dataclass(frozen=True)
class _Encoded:
    """The token sequences `score_items` scores, and how their scores map back to items."""

    rows: list[_Row]
    n_first: dict[int, int]  # item -> token count of its first copy (induction items)
    n_neutral: int  # distinct options, each scored once after the neutral prompt
    neutral_cells: list[tuple[int, int, int]]  # (item, option, distinct-option index)


def _encode_items(tokenizer: Any, items: Sequence[ProbeItem], neutral_prompt: str) -> _Encoded:
    """Encode every (item, option) and each distinct option after the neutral prompt."""
    rows: list[_Row] = []
    n_ids = encode(tokenizer, neutral_prompt)
    if not n_ids:
        raise SeedscopeError(
            f"The neutral prompt {neutral_prompt!r} has no tokens.", "use a non-empty one."
        )
    n_first: dict[int, int] = {}
    neutral_of: dict[tuple[int, ...], int] = {}
    neutral_cells: list[tuple[int, int, int]] = []
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
            rows.append((i, j, p_ids + o_ids, len(p_ids), False))
            # the neutral score depends on the option alone: one row per distinct option
            if tuple(o_ids) not in neutral_of:
                neutral_of[tuple(o_ids)] = len(neutral_of)
                rows.append((-1, neutral_of[tuple(o_ids)], n_ids + o_ids, len(n_ids), True))
            neutral_cells.append((i, j, neutral_of[tuple(o_ids)]))
        if item.first_copy is not None:
            f_ids = encode(tokenizer, item.first_copy)
            if p_ids[: len(f_ids)] == f_ids:
                n_first[i] = len(f_ids)
    return _Encoded(rows, n_first, len(neutral_of), neutral_cells)


def _check_context(model: Any, rows: Sequence[_Row]) -> None:
    """Refuse probes longer than the model's context, before any forward pass."""
    max_pos = model_context(model)
    longest = max((len(r[2]) for r in rows), default=0)
    if max_pos is not None and longest > max_pos:
        raise SeedscopeError(
            f"A probe is {longest} tokens long; the model takes at most {max_pos}.",
            "use shorter probes.",
        )


@dataclass(frozen=True)
class _Scores:
    """Per (item, option) summed log-probs and per-item extras, filled batch by batch."""

    logp: np.ndarray  # [item, option], given the prompt
    logp_neutral: np.ndarray  # [item, option], given the neutral prompt
    opt_tokens: np.ndarray  # [item, option] token counts
    lang_mass: np.ndarray  # [item]
    lang_share: np.ndarray  # [item]
    first_loss: np.ndarray  # [item]
    second_loss: np.ndarray  # [item]
    neutral_logp: np.ndarray  # [distinct option]

    @classmethod
    def empty(cls, items: Sequence[ProbeItem], n_neutral: int) -> _Scores:
        """NaN-filled arrays (zero token counts) sized for `items`."""
        logp = np.full((len(items), max((len(it.options) for it in items), default=0)), np.nan)
        return cls(
            logp=logp,
            logp_neutral=np.full(logp.shape, np.nan),
            opt_tokens=np.zeros(logp.shape, dtype=np.int64),
            lang_mass=np.full(len(items), np.nan),
            lang_share=np.full(len(items), np.nan),
            first_loss=np.full(len(items), np.nan),
            second_loss=np.full(len(items), np.nan),
            neutral_logp=np.full(n_neutral, np.nan),
        )


def _score_rows(
    model: Any,
    items: Sequence[ProbeItem],
    encoded: _Encoded,
    batch_size: int,
    device: str,
    language_map: Mapping[str, np.ndarray] | None,
) -> _Scores:
    """Run every row through the model, longest first in padded batches, and record scores."""
    scores = _Scores.empty(items, encoded.n_neutral)
    lang_ids = (
        {k: torch.as_tensor(v, dtype=torch.long) for k, v in language_map.items()}
        if language_map is not None
        else None
    )
    rows = encoded.rows
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][2]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            logits, tok_lp = _batch_logprobs(model, batch, device)
            for b, row in enumerate(batch):
                lp = tok_lp[b, : len(row[2]) - 1].double().numpy()
                _record_row(scores, items, encoded.n_first, lang_ids, row, lp, logits[b])
    for i, j, shared in encoded.neutral_cells:
        scores.logp_neutral[i, j] = scores.neutral_logp[shared]
    return scores


def _batch_logprobs(
    model: Any, batch: Sequence[_Row], device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `[batch, width, vocab]` and token log-probs `[batch, width - 1]` of a batch
    padded right (position t predicts token t + 1)."""
    pad = 0
    width = max(len(r[2]) for r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (_, _, seq, _, _) in enumerate(batch):
        ids[b, : len(seq)] = torch.as_tensor(seq)
        mask[b, : len(seq)] = 1
    logits = _forward_logits(model, ids.to(device), mask.to(device)).cpu()
    norm = torch.logsumexp(logits[:, :-1], dim=-1)
    tok_lp = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] - norm
    return logits, tok_lp


def _record_row(
    scores: _Scores,
    items: Sequence[ProbeItem],
    n_first: Mapping[int, int],
    lang_ids: Mapping[str, torch.Tensor] | None,
    row: _Row,
    lp: np.ndarray,
    logits: torch.Tensor,
) -> None:
    """Store one row's option score; for a correct option also its language mass and, for
    induction items, the first and second copy's losses."""
    i, j, seq, n_p, neutral = row
    if neutral:
        scores.neutral_logp[j] = lp[n_p - 1 :].sum()
        return
    scores.logp[i, j] = lp[n_p - 1 :].sum()
    scores.opt_tokens[i, j] = len(seq) - n_p
    if j != 0:
        return
    item = items[i]
    if lang_ids is not None and item.language in lang_ids:
        probs = torch.softmax(logits[n_p - 1].double(), dim=-1)
        masses = {k: float(probs[v].sum()) for k, v in lang_ids.items()}
        scores.lang_mass[i] = masses[item.language]
        total = sum(masses.values())
        scores.lang_share[i] = masses[item.language] / total if total > 0 else np.nan
    if i in n_first and n_first[i] >= 2 and len(seq) - n_first[i] >= 2:
        nf = n_first[i]
        scores.first_loss[i] = -lp[: nf - 1].mean()  # predicts tokens 1 .. nf-1
        scores.second_loss[i] = -lp[nf:].mean()  # predicts tokens nf+1 .. end


def _judge(lp_opt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(correct option's score, best wrong one's, margin, correct strictly best) per item."""
    n_items = lp_opt.shape[0]
    wrong = np.where(np.isnan(lp_opt[:, 1:]), -np.inf, lp_opt[:, 1:])
    best = wrong.max(axis=1) if n_items else np.zeros(0)
    right = lp_opt[:, 0] if n_items else np.zeros(0)
    return right, best, right - best, right > best


def _item_frame(items: Sequence[ProbeItem], scores: _Scores, scoring: str) -> pd.DataFrame:
    """One row per item: every scoring's verdict, the headline `scoring`'s, and the extras."""
    logp, opt_tokens = scores.logp, scores.opt_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        per_token = logp / opt_tokens
    pmi = logp - scores.logp_neutral
    by_scoring = {"summed": logp, "per_token": per_token, "pmi": pmi}
    judged = {name: _judge(lp_opt) for name, lp_opt in by_scoring.items()}
    right, best_wrong, margin, correct = judged[scoring]
    n_options = np.array([len(it.options) for it in items], dtype=np.int64)
    chance = 1.0 / n_options if len(items) else np.zeros(0)
    return pd.DataFrame(
        {
            "item": np.arange(len(items)),
            "behaviour": [it.behaviour for it in items],
            "group": [it.group for it in items],
            "cluster": [it.cluster or f"item{i}" for i, it in enumerate(items)],
            "language": [it.language for it in items],
            "prompt": [it.prompt for it in items],
            "correct_option": [it.correct for it in items],
            "n_options": n_options,
            "chance": chance,
            "option_tokens": [list(row[row > 0]) for row in opt_tokens],
            "logp_options": [list(row[~np.isnan(row)]) for row in logp],
            "logp_options_per_token": [list(row[~np.isnan(row)]) for row in per_token],
            "logp_options_neutral": [list(row[~np.isnan(row)]) for row in scores.logp_neutral],
            "logp_options_pmi": [list(row[~np.isnan(row)]) for row in pmi],
            "correct_summed": judged["summed"][3],
            "margin_summed": judged["summed"][2],
            "correct_per_token": judged["per_token"][3],
            "margin_per_token": judged["per_token"][2],
            "correct_pmi": judged["pmi"][3],
            "margin_pmi": judged["pmi"][2],
            "logp_correct": right,
            "logp_best_wrong": best_wrong,
            "margin": margin,
            "correct": correct,
            "score": (correct - chance) / (1.0 - chance),
            "n_option_tokens": opt_tokens[:, 0] if len(items) else np.zeros(0, dtype=np.int64),
            "lang_mass": scores.lang_mass,
            "lang_share": scores.lang_share,
            "first_copy_loss": scores.first_loss,
            "second_copy_loss": scores.second_loss,
            "induction_gain": scores.first_loss - scores.second_loss,
        }
    )


# metric name -> item-score column (metrics not listed are their own column)
METRIC_COLUMNS: dict[str, str] = {
    "accuracy": "correct",
    "accuracy_summed": "correct_summed",
    "accuracy_per_token": "correct_per_token",
    "accuracy_pmi": "correct_pmi",
}


def metrics_for(behaviour: str) -> tuple[str, ...]:
    """Metrics reported for a behaviour: score (chance-normalised accuracy, the one the
    emergence threshold applies to), accuracy and margin (headline scoring), accuracy under
    each scoring, plus its own."""
    return (
        "score", "accuracy", "margin", "accuracy_summed", "accuracy_per_token", "accuracy_pmi",
        *EXTRA_METRICS.get(behaviour, ()),
    )  # fmt: skip


def _cluster_ids(frame: pd.DataFrame) -> np.ndarray:
    """Integer cluster id per row (each row its own cluster when there is no `cluster`)."""
    if "cluster" not in frame.columns:
        return np.arange(len(frame))
    return pd.factorize(frame["cluster"].astype(str), sort=True)[0]


def cluster_bootstrap_mean(
    values: np.ndarray,
    clusters: np.ndarray,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
    weights: np.ndarray | None = None,
):
    """Mean of finite `values` with a percentile CI that resamples whole clusters (items
    sharing an entity/acronym/sentence move together): `stats.window_bootstrap` with one
    window per cluster (a cluster's NaN items count for nothing). `weights`: precomputed
    `stats.bootstrap_weights(n_clusters, n_boot, seed)` for these clusters, shared by every
    metric of the same items. A single cluster gives NaN bounds."""
    from seedscope.core.stats import ratio_statistic, window_bootstrap

    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    ids = np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1)
    n_clusters = int(ids.max()) + 1 if ids.size else 0
    per_cluster = np.zeros((max(n_clusters, 1), 2))
    np.add.at(per_cluster[:, 0], ids[keep], values[keep])
    np.add.at(per_cluster[:, 1], ids[keep], 1.0)
    if n_clusters < 2:
        weights, n_boot = None, 0
    return window_bootstrap(per_cluster, ratio_statistic, n_boot, seed, ci, weights)


def summarise(
    scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Behaviour x group x metric: value (item mean), ci_low, ci_high (percentile CI from
    resampling item clusters, `cluster_bootstrap_mean`), n (items). Group 'all' pools a
    behaviour's groups. score is the chance-normalised accuracy, accuracy the fraction of
    items whose correct option wins; margin is in nats."""
    from seedscope.core.stats import bootstrap_weights

    out = []
    for behaviour, frame in scores.groupby("behaviour", sort=False):
        parts = [("all", frame)]
        if frame["group"].nunique() > 1 or frame["group"].iloc[0] != "all":
            parts += list(frame.groupby("group", sort=True))
        for group, part in parts:
            clusters = _cluster_ids(part)
            n_clusters = int(clusters.max()) + 1 if clusters.size else 0
            # one set of cluster draws for every metric of these items (common random numbers)
            weights = (
                bootstrap_weights(n_clusters, n_boot, seed) if n_clusters > 1 and n_boot else None
            )
            for metric in metrics_for(str(behaviour)):
                col = METRIC_COLUMNS.get(metric, metric)
                if col not in part.columns:
                    continue
                vals = part[col].to_numpy(dtype=np.float64)
                n = int(np.isfinite(vals).sum())
                if n == 0:
                    continue
                res = cluster_bootstrap_mean(vals, clusters, n_boot, seed, ci, weights)
                est, low, high = res.as_tuple()
                out.append((behaviour, str(group), metric, est, low, high, n))
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
    """The first checkpoint from which `values` is >= threshold at every later checkpoint
    (a curve that dips back below restarts the search), or None if the last checkpoint is
    below. NaN values (missing checkpoints) are skipped. Pass a CI's lower bound as `values`
    to ask for emergence beyond the data's uncertainty (`emergence_table` does)."""
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
    threshold: float | Mapping[str, float],
    metric: str = "score",
    group: str = "all",
) -> pd.DataFrame:
    """Emergence step per behaviour x run, from the data's uncertainty: the first checkpoint
    whose CI lower bound of `metric` (default the chance-normalised score) is >= threshold
    and stays so at every later checkpoint (`emergence_step` on `ci_low`).

    Columns: behaviour, run, (seed, size, label), metric, threshold, emergence_step (NaN =
    never, censored at last_step), emerged, last_step, emergence_step_point (the same rule on
    the point estimate, for comparison: it fires on noise), final_value, final_ci_low.
    `threshold` is one number for every behaviour, or behaviour -> number."""
    names = list(threshold) if isinstance(threshold, Mapping) else []
    unknown = [b for b in names if b not in BEHAVIOURS]
    if unknown:
        check_behaviours(unknown)
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    extra = [c for c in ("seed", "size", "label") if c in sub.columns]
    rows = []
    for (behaviour, run), frame in sub.groupby(["behaviour", "run"], sort=False):
        if isinstance(threshold, Mapping) and behaviour not in threshold:
            continue
        level = float(threshold[behaviour] if isinstance(threshold, Mapping) else threshold)
        frame = frame.sort_values("step")
        step = emergence_step(frame["step"], frame["ci_low"], level)
        point = emergence_step(frame["step"], frame["value"], level)
        row = {"behaviour": behaviour, "run": run}
        row.update({c: frame[c].iloc[0] for c in extra})
        row.update(
            metric=metric,
            threshold=level,
            emergence_step=np.nan if step is None else float(step),
            emerged=step is not None,
            last_step=int(frame["step"].iloc[-1]),
            emergence_step_point=np.nan if point is None else float(point),
            final_value=float(frame["value"].iloc[-1]),
            final_ci_low=float(frame["ci_low"].iloc[-1]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def km_median(times: Sequence[float], observed: Sequence[bool]) -> float:
    """Kaplan-Meier median of event times with right censoring (`observed` False = the
    event had not happened by `times`), from `scipy.stats.ecdf`: the first time the survival
    curve reaches 0.5 or below (the midpoint to the next event time when it sits exactly at
    0.5, so uncensored data give the ordinary median); NaN when it never does ("not
    reached": fewer than half the runs have the event)."""
    from scipy.stats import CensoredData, ecdf

    times = np.asarray(times, dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    if times.shape != observed.shape:
        raise SeedscopeError("times and observed differ in shape.", "pair them.")
    if not observed.any():
        return float("nan")
    if observed.all():
        data = times
    else:
        data = CensoredData(uncensored=times[observed], right=times[~observed])
    sf = ecdf(data).sf
    q, p = sf.quantiles, sf.probabilities
    at = np.flatnonzero(p <= 0.5 + 1e-12)
    if at.size == 0:
        return float("nan")
    i = int(at[0])
    if abs(p[i] - 0.5) < 1e-12 and i + 1 < q.size:
        return float((q[i] + q[i + 1]) / 2)
    return float(q[i])


def t_interval(values: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Student-t CI of the mean (scipy); (mean, mean) when the sd is 0, NaNs for n < 2."""
    import scipy.stats

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + ci / 2, values.size - 1)) * sd / np.sqrt(values.size)
    return mean - half, mean + half


def emergence_summary(emergence: pd.DataFrame, ci: float = 0.95) -> pd.DataFrame:
    """Emergence across seeds, per behaviour x size (seeds are compared within a size only;
    a table without `size` is one size 'all'). Runs that never emerge are censored at their
    last checkpoint, not dropped.

    Columns: behaviour, size, n_runs, n_emerged, emerged ('k/n runs'), km_median (Kaplan-
    Meier median step; NaN = not reached), min, max, range (among the emerged runs only),
    and mean, sd (ddof=1), t_low / t_high (t-interval of the mean: with <= 5 seeds a
    bootstrap over seeds under-covers, so the range and a t-interval are what is reported)
    only when every run emerged: over the emerged runs alone they would be conditional on
    emerging and biased early, so they are NaN when any run is censored."""
    frame = emergence if "size" in emergence.columns else emergence.assign(size="all")
    rows = []
    for (behaviour, size), part in frame.groupby(["behaviour", "size"], sort=False):
        steps = part["emergence_step"].to_numpy(dtype=np.float64)
        observed = np.isfinite(steps)
        times = np.where(observed, steps, part["last_step"].to_numpy(dtype=np.float64))
        done = steps[observed]
        row = {
            "behaviour": behaviour,
            "size": str(size),
            "n_runs": int(steps.size),
            "n_emerged": int(done.size),
            "emerged": f"{int(done.size)}/{int(steps.size)} runs",
            "km_median": km_median(times, observed),
        }
        nan = float("nan")
        complete = done.size == steps.size
        low, high = t_interval(done, ci) if complete else (nan, nan)
        row.update(
            min=float(done.min()) if done.size else nan,
            max=float(done.max()) if done.size else nan,
            range=float(done.max() - done.min()) if done.size else nan,
            mean=float(done.mean()) if done.size and complete else nan,
            sd=float(done.std(ddof=1)) if done.size > 1 and complete else nan,
            t_low=low,
            t_high=high,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def item_score_sd(score: float, n_options: int) -> float:
    """sd of one item's chance-normalised score, (correct - chance) / (1 - chance), at a
    true chance-normalised score `score` with `n_options` options: sqrt(p (1 - p)) / (1 -
    chance), p = chance + score (1 - chance). Fewer options, larger sd at the same score."""
    chance = 1.0 / n_options
    p = chance + score * (1 - chance)
    return float(np.sqrt(p * (1 - p)) / (1 - chance))


def option_count_caveat(n_options: Mapping[str, int], threshold: float) -> str:
    """Why emergence steps of behaviours with different option counts are not comparable:
    the CI-lower-bound rule waits longer where one item's score is noisier (fewer options)."""
    counts = sorted(set(int(k) for k in dict(n_options).values()))
    if len(counts) < 2:
        return ""
    lo, hi = counts[0], counts[-1]
    names = sorted(b for b, k in dict(n_options).items() if int(k) == lo)
    return (
        f" At a true score of {threshold:g} one item's chance-normalised score has sd "
        f"{item_score_sd(threshold, lo):.2f} with {lo} options ({', '.join(names)}) but "
        f"{item_score_sd(threshold, hi):.2f} with {hi}, so with as many items the CI lower bound "
        f"of a {lo}-option behaviour reaches the threshold later at the same true score: "
        "emergence steps compare fairly only between behaviours with the same number of options."
    )


def emergence_sentence(
    summary: pd.DataFrame, threshold: float, n_options: Mapping[str, int] | None = None
) -> str:
    """One sentence per size: in how many runs each behaviour emerged and its KM median;
    with `n_options` (behaviour -> option count), the caveat that emergence steps are not
    comparable across option counts (`option_count_caveat`)."""
    if summary.empty:
        return "No behaviour was scored."
    parts = []
    for size, part in summary.groupby("size", sort=False):
        bits = []
        for r in part.itertuples():
            median = "not reached" if not np.isfinite(r.km_median) else f"{r.km_median:g}"
            bits.append(f"{r.behaviour} {r.emerged} (median step {median})")
        parts.append(f"**{size}**: " + "; ".join(bits))
    return (
        f"A behaviour emerges in a run at the first checkpoint from which the lower 95% CI "
        f"bound of its chance-normalised score stays at or above {threshold:g}; runs where "
        "it never does are censored at the last checkpoint (median: Kaplan-Meier). "
        + ". ".join(parts)
        + "."
        + (option_count_caveat(n_options, threshold) if n_options is not None else "")
    )


def multi_bootstrap_items(
    matrix: np.ndarray, clusters: Sequence[Any], n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray | float]:
    """The Multi-Bootstrap (Sellam et al. 2022) of a mean over seeds x items.

    matrix: `[n_runs, n_items]` item scores, the same items in every run (NaN = missing).
    A replicate draws runs (seeds) with replacement and item clusters with replacement
    (items sharing a cluster move together; clusters shared by all runs), and computes the
    mean over drawn runs of each run's item mean, and the sd across the drawn runs. Draw
    order: runs first, then clusters, so every call with the same seed and n_runs draws the
    same runs (common random numbers across behaviours). Returns estimate, seed_sd (on all
    data), and the replicates `mean_reps`, `sd_reps` `[n_boot]`.
    """
    from seedscope.core.stats import _counts

    matrix = np.asarray(matrix, dtype=np.float64)
    n_runs, n_items = matrix.shape
    ids = np.unique(np.asarray(clusters).astype(str), return_inverse=True)[1]
    if ids.size != n_items:
        raise SeedscopeError("One cluster per item column is needed.", "pass n_items labels.")
    n_clusters = int(ids.max()) + 1 if n_items else 0
    finite = np.isfinite(matrix)
    sums = np.zeros((n_runs, n_clusters))
    counts = np.zeros((n_runs, n_clusters))
    for r in range(n_runs):
        np.add.at(sums[r], ids, np.where(finite[r], matrix[r], 0.0))
        np.add.at(counts[r], ids, finite[r].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        run_means = sums.sum(1) / counts.sum(1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_runs, size=(n_boot, n_runs))
    weights = _counts(rng.integers(0, n_clusters, size=(n_boot, n_clusters)), n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        rep_run_means = (weights @ sums.T) / (weights @ counts.T)  # [n_boot, n_runs]
    drawn = rep_run_means[np.arange(n_boot)[:, None], picks]
    return {
        "estimate": float(run_means.mean()),
        "seed_sd": float(run_means.std(ddof=1)) if n_runs > 1 else float("nan"),
        "run_means": run_means,
        "mean_reps": drawn.mean(axis=1),
        "sd_reps": drawn.std(axis=1, ddof=1) if n_runs > 1 else np.full(n_boot, np.nan),
        "n_clusters": n_clusters,
    }


def _percentiles(reps: np.ndarray, ci: float) -> tuple[float, float]:
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - ci) / 2
    low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def final_scores(
    item_scores: pd.DataFrame,
    step: int,
    sizes: Mapping[str, str] | None = None,
    metric: str = "score",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Final-checkpoint `metric` per behaviour x size with a Multi-Bootstrap CI over seeds
    (runs of that size) x item clusters (`multi_bootstrap_items`), never pooled over sizes.

    item_scores: `score_items` frames with `run` and `step` columns; sizes: run -> size
    (None: one size 'all'). Table columns: behaviour, size, step, metric, value, ci_low,
    ci_high, seed_sd (sd across seeds of the run means) with seed_sd_low / seed_sd_high,
    run_min, run_max (the range over seeds), t_low / t_high (t-interval over the seed means:
    with <= 5 seeds a seed bootstrap under-covers), n_runs, n_items, n_clusters.

    Also returns the summary over behaviours (same run draws for every behaviour of a size,
    so replicates combine): mean seed sd over behaviours x sizes with its CI.
    """
    col = METRIC_COLUMNS.get(metric, metric)
    sub = item_scores[item_scores["step"] == step]
    if sub.empty:
        raise SeedscopeError(f"No item scores at step {step}.", "pick a scored checkpoint.")
    size_of = sub["run"].map(sizes) if sizes is not None else pd.Series("all", index=sub.index)
    sub = sub.assign(size=size_of.fillna("all").astype(str))
    rows, sd_reps = [], []
    for (behaviour, size), part in sub.groupby(["behaviour", "size"], sort=False):
        grid = part.pivot_table(index="run", columns="item", values=col, aggfunc="first")
        clusters = part.drop_duplicates("item").set_index("item")["cluster"]
        res = multi_bootstrap_items(
            grid.to_numpy(dtype=np.float64), clusters.loc[grid.columns].to_numpy(), n_boot, seed
        )
        low, high = _percentiles(res["mean_reps"], ci)
        sd_low, sd_high = _percentiles(res["sd_reps"], ci)
        t_low, t_high = t_interval(res["run_means"], ci)
        rows.append(
            {
                "behaviour": behaviour,
                "size": size,
                "step": int(step),
                "metric": metric,
                "value": res["estimate"],
                "ci_low": low,
                "ci_high": high,
                "seed_sd": res["seed_sd"],
                "seed_sd_low": sd_low,
                "seed_sd_high": sd_high,
                "run_min": float(res["run_means"].min()),
                "run_max": float(res["run_means"].max()),
                "t_low": t_low,
                "t_high": t_high,
                "n_runs": int(grid.shape[0]),
                "n_items": int(grid.shape[1]),
                "n_clusters": int(res["n_clusters"]),
            }
        )
        if grid.shape[0] > 1:
            sd_reps.append(res["sd_reps"])
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"seed_sd": float("nan"), "ci_low": float("nan"),
                               "ci_high": float("nan"), "n_cells": len(sd_reps)}  # fmt: skip
    if sd_reps:
        reps = np.mean(np.stack(sd_reps), axis=0)
        low, high = _percentiles(reps, ci)
        summary.update(seed_sd=float(table["seed_sd"].dropna().mean()), ci_low=low, ci_high=high)
    return table, summary


def _nearest_step(steps: np.ndarray, target: int) -> int:
    return int(steps[np.argmin(np.abs(steps - target))])


def seed_spread_mid_vs_final(
    table: pd.DataFrame,
    mid_step: int,
    final_step: int,
    metric: str = "score",
    group: str = "all",
    item_scores: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Which behaviours differ most between seeds at mid-training vs at the end: per
    behaviour x size (seeds are compared within a size; a table without `size` is one size
    'all'), the mean, sd (ddof=1) and range of the metric across runs at the checkpoint
    nearest `mid_step` and at the one nearest `final_step`, and sd_change = sd_final -
    sd_mid (negative: seeds agree more by the end). A difference, not a ratio: identical
    runs give 0, never 0/0. Sizes with a single run (no seed spread) are left out. Sorted
    by sd_mid, largest first. With `item_scores` (group 'all'), sd_change_low / _high: a
    paired Multi-Bootstrap CI (the same seed and item-cluster draws at both checkpoints),
    and what this many seeds could detect (`detectable_sd_ratio`): detectable_ratio, the
    largest sd_final / sd_mid the CI excludes from 0 with 80% power (NaN: none, not even
    full agreement), and detectable_change = -sd_mid * (1 - detectable_ratio), the smallest
    drop of the seed sd this design detects (item resampling widens the CI further, so a
    lower bound on it)."""
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    if "size" not in sub.columns:
        sub = sub.assign(size="all")
    rows = []
    for (behaviour, size), frame in sub.groupby(["behaviour", "size"], sort=False):
        if frame["run"].nunique() < 2:
            continue
        row = {"behaviour": behaviour, "size": str(size)}
        for label, target in (("mid", mid_step), ("final", final_step)):
            vals = []
            for _, run_frame in frame.groupby("run", sort=True):
                steps = run_frame["step"].to_numpy()
                s = _nearest_step(steps, target)
                vals.append(float(run_frame.loc[run_frame["step"] == s, "value"].iloc[0]))
            arr = np.array(vals)
            row[f"step_{label}"] = s
            row[f"mean_{label}"] = float(arr.mean())
            row[f"sd_{label}"] = float(arr.std(ddof=1))
            row[f"range_{label}"] = float(arr.max() - arr.min())
        row["sd_change"] = row["sd_final"] - row["sd_mid"]
        row["n_runs"] = len(vals)
        if item_scores is not None and group == "all":
            runs = sorted(frame["run"].unique())
            reps = []
            for label in ("mid", "final"):
                part = item_scores[
                    (item_scores["behaviour"] == behaviour)
                    & (item_scores["step"] == row[f"step_{label}"])
                    & item_scores["run"].isin(runs)
                ]
                col = METRIC_COLUMNS.get(metric, metric)
                grid = part.pivot_table(index="run", columns="item", values=col, aggfunc="first")
                clusters = part.drop_duplicates("item").set_index("item")["cluster"]
                res = multi_bootstrap_items(
                    grid.loc[runs].to_numpy(dtype=np.float64),
                    clusters.loc[grid.columns].to_numpy(),
                    n_boot,
                    seed,
                )
                reps.append(res["sd_reps"])
            row["sd_change_low"], row["sd_change_high"] = _percentiles(reps[1] - reps[0], ci)
            ratio = detectable_sd_ratio(len(runs), n_boot, ci, seed=seed)
            row["detectable_ratio"] = ratio
            row["detectable_change"] = -row["sd_mid"] * (1 - ratio)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("sd_mid", ascending=False, ignore_index=True) if len(out) else out


@lru_cache(maxsize=64)
def detectable_sd_ratio(
    n_runs: int,
    n_boot: int = 1000,
    ci: float = 0.95,
    power: float = 0.8,
    n_sims: int = 400,
    seed: int = 0,
) -> float:
    """The minimum detectable convergence of the seed spread with `n_runs` seeds: the largest
    ratio sd_final / sd_mid for which the paired percentile bootstrap over seeds (the seed
    part of `seed_spread_mid_vs_final`'s CI) puts the upper bound of sd_final - sd_mid below
    0 in at least `power` of `n_sims` simulated designs. Simulated at the level of run means
    (mid ~ N(0, 1), final ~ N(0, ratio), independent; the same seed draws at both
    checkpoints; common random numbers over a grid of ratios 0, 0.01, .., 1), so it is
    scale-free and ignores item noise, which only lowers power. NaN when even ratio 0 (all
    seeds agree at the end) is not detected with that power: with 2-3 seeds a percentile
    bootstrap over seeds draws one run alone too often to ever exclude 0."""
    if n_runs < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    n_boot = max(int(n_boot), 1)
    mid = rng.standard_normal((n_sims, n_runs))
    final = rng.standard_normal((n_sims, n_runs))
    picks = rng.integers(0, n_runs, size=(n_sims, n_boot, n_runs))
    rows = np.arange(n_sims)[:, None, None]
    sd_mid = mid[rows, picks].std(axis=2, ddof=1)
    sd_final = final[rows, picks].std(axis=2, ddof=1)
    upper = 100 * (1 - (1 - ci) / 2)
    best = float("nan")
    for ratio in np.linspace(0.0, 1.0, 101):
        high = np.percentile(ratio * sd_final - sd_mid, upper, axis=1)
        if (high < 0).mean() >= power:
            best = float(ratio)
    return best


def mid_final_sentence(mid_final: pd.DataFrame) -> str:
    """What the mid-vs-final seed-spread table can and cannot say: per seed count, the drop
    of the seed sd the paired CI would detect with 80% power, and how many behaviour x size
    cells have a CI below 0 (seeds agree more at the end) or above 0. A CI containing 0 is
    'not detectable with these seeds', never 'did not converge'."""
    if mid_final.empty or "detectable_ratio" not in mid_final.columns:
        return "Seed spread at mid-training vs the end: fewer than two runs per size."
    parts = []
    for n_runs, part in mid_final.groupby("n_runs", sort=True):
        ratio = float(part["detectable_ratio"].iloc[0])
        if np.isfinite(ratio):
            parts.append(
                f"with {n_runs} seeds the paired CI excludes 0 with 80% power only when the "
                f"seed sd falls to {ratio:.0%} of its mid-training value or less (a drop of at "
                f"least {1 - ratio:.0%}; item noise raises this further)"
            )
        else:
            parts.append(
                f"with {n_runs} seeds the paired CI cannot exclude 0 with 80% power even if "
                "every seed agrees exactly at the end"
            )
    below = int((mid_final["sd_change_high"] < 0).sum())
    above = int((mid_final["sd_change_low"] > 0).sum())
    return (
        "Seed spread at mid-training vs the end (sd across seeds within a size): "
        + "; ".join(parts)
        + f". Of {len(mid_final)} behaviour x size cells, {below} have a CI below 0 (seeds "
        f"agree more at the end) and {above} above 0; a CI that contains 0 means the change "
        "was not detectable with these seeds, not that the seeds did not converge."
    )


def scoring_comparison(item_scores: pd.DataFrame) -> pd.DataFrame:
    """Summed vs per-token scoring, per behaviour x step (pooled over runs): accuracy under
    each, the fraction of items on which the two disagree, and each one's accuracy on items
    whose correct option is strictly the shortest in tokens vs strictly the longest (a
    length-biased score is high on the first and low on the second), and the accuracy on
    items whose options all have the same token count (where the two scorings agree by
    construction: the length-fair reference)."""
    rows = []
    toks = item_scores["option_tokens"].map(lambda t: np.asarray(t, dtype=np.int64))
    first = toks.map(lambda t: int(t[0]))
    shortest = toks.map(lambda t: bool(t[0] < t[1:].min()))
    longest = toks.map(lambda t: bool(t[0] > t[1:].max()))
    equal = toks.map(lambda t: bool((t == t[0]).all()))
    frame = item_scores.assign(_short=shortest, _long=longest, _equal=equal, _n=first)
    for (behaviour, step), part in frame.groupby(["behaviour", "step"], sort=True):
        row = {
            "behaviour": behaviour,
            "step": int(step),
            "n_items": len(part),
            "unequal_lengths": float((part["_short"] | part["_long"]).mean()),
            "disagree": float((part["correct_summed"] != part["correct_per_token"]).mean()),
            "n_equal_lengths": int(part["_equal"].sum()),
            "accuracy_equal_lengths": (
                float(part.loc[part["_equal"], "correct_summed"].mean())
                if part["_equal"].any()
                else np.nan
            ),
        }
        for name in SCORINGS:
            correct = part[f"correct_{name}"].astype(float)
            row[f"accuracy_{name}"] = float(correct.mean())
            for label, mask in (("shortest", part["_short"]), ("longest", part["_long"])):
                row[f"accuracy_{name}_{label}"] = (
                    float(correct[mask].mean()) if mask.any() else np.nan
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _weighted(values: pd.Series, weights: pd.Series) -> float:
    v, w = values.to_numpy(dtype=np.float64), weights.to_numpy(dtype=np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float(np.average(v[ok], weights=w[ok])) if ok.any() else float("nan")


def scoring_sentence(comparison: pd.DataFrame, headline_scoring: str) -> str:
    """What the scorings say at the first and last scored checkpoints: how often summed and
    per-token disagree, and each one's length bias (accuracy on items whose correct option
    is the shortest vs the longest)."""
    check_scoring(headline_scoring)
    if comparison.empty:
        return "No items were scored."
    parts = []
    for step in sorted({int(comparison["step"].min()), int(comparison["step"].max())}):
        part = comparison[comparison["step"] == step]
        w = part["n_items"].to_numpy(dtype=np.float64)

        def avg(col: str, part=part, w=w) -> float:
            v = part[col].to_numpy(dtype=np.float64)
            ok = np.isfinite(v)
            return float(np.average(v[ok], weights=w[ok])) if ok.any() else float("nan")

        parts.append(
            f"at step {step} the two disagree on {avg('disagree'):.0%} of items; summed "
            f"scoring is right on {avg('accuracy_summed_shortest'):.0%} of items whose correct "
            f"option is the shortest and {avg('accuracy_summed_longest'):.0%} where it is the "
            f"longest (per-token: {avg('accuracy_per_token_shortest'):.0%} vs "
            f"{avg('accuracy_per_token_longest'):.0%}; PMI: "
            f"{avg('accuracy_pmi_shortest'):.0%} vs {avg('accuracy_pmi_longest'):.0%}); "
            f"on the {int(part['n_equal_lengths'].sum())}"
            f" items whose options are equally long (both agree) accuracy is "
            f"{_weighted(part['accuracy_equal_lengths'], part['n_equal_lengths']):.0%}"
        )
    unequal = float(np.average(comparison["unequal_lengths"], weights=comparison["n_items"]))
    last = comparison[comparison["step"] == comparison["step"].max()]
    w_last = last["n_items"]
    bias = {
        name: _weighted(last[f"accuracy_{name}_longest"], w_last)
        - _weighted(last[f"accuracy_{name}_shortest"], w_last)
        for name in SCORINGS
    }
    headline_bias = bias[headline_scoring]
    if np.isfinite(headline_bias):
        direction = "longest" if headline_bias > 0 else "shortest"
        fairest = min((n for n in SCORINGS if np.isfinite(bias[n])), key=lambda n: abs(bias[n]))
        parts.append(
            f"so at step {int(last['step'].iloc[0])} the headline ({headline_scoring}) scoring "
            f"is right {abs(headline_bias) * 100:.0f} percentage points more often when the "
            "correct option is the "
            f"{direction} than when it is the {'shortest' if direction == 'longest' else 'longest'}"
            f" (a length bias, though behaviours also differ between the two sets); the smallest "
            f"such gap is {fairest}'s ({bias[fairest] * 100:+.0f} points), so read behaviours "
            "whose options "
            "differ in length with this in mind"
        )
    name = {"per_token": "per-token-normalised", "summed": "summed",
            "pmi": "PMI (calibrated)"}[headline_scoring]  # fmt: skip
    return (
        f"Options are scored by summed, by per-token-normalised log-prob and by PMI (summed "
        f"log-prob given the prompt minus given a neutral prompt); the headline uses the {name} "
        f"one. {unequal:.0%} of items have a correct option strictly shorter or "
        "longer (in tokens) than every alternative; " + "; ".join(parts) + "."
    )


def final_sentence(final: pd.DataFrame, summary: Mapping[str, Any]) -> str:
    """The final-checkpoint scores per size and the seed spread, from `final_scores`."""
    if "metric" in final.columns:
        final = final[final["metric"] == "score"]
    if final.empty:
        return "No final scores."
    parts = []
    for size, part in final.groupby("size", sort=False):
        best = part.sort_values("value", ascending=False)
        bits = [
            f"{r.behaviour} {r.value:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
            for r in best.itertuples()
        ]
        parts.append(f"**{size}** ({int(part['n_runs'].iloc[0])} seeds): " + ", ".join(bits))
    text = (
        f"Chance-normalised score at step {int(final['step'].iloc[0])} (mean over seeds, 95% "
        "Multi-Bootstrap CI over seeds x item clusters): " + "; ".join(parts) + ". "
    )
    if np.isfinite(summary.get("seed_sd", np.nan)):
        text += (
            f"Across seeds of one size the score differs by an sd of {summary['seed_sd']:.3f} "
            f"on average over behaviours [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]; "
            "with this few seeds read the per-behaviour range, not the CI alone."
        )
    else:
        text += "There is one run per size: no seed spread."
    return text


# --------------------------------------------------------------------------- figures


def _run_labels(frame: pd.DataFrame) -> dict[str, str]:
    if "label" in frame.columns:
        return dict(zip(frame["run"], frame["label"], strict=False))
    if "seed" in frame.columns:
        return {r: f"{r} (seed {s})" for r, s in zip(frame["run"], frame["seed"], strict=False)}
    return {r: str(r) for r in frame["run"]}


_METRIC_UNITS = {
    "score": "chance-normalised score (0 = chance, 1 = all correct)",
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
    fig, ax = plt.subplots(
        figsize=(min(7.2, max(6.0, 0.12 * grid.shape[1] + 3)), 0.45 * len(order) + 1.6)
    )
    sns.heatmap(
        grid.to_numpy(),
        ax=ax,
        cmap="viridis",
        cbar_kws={"label": _METRIC_UNITS.get(metric, metric)},
        vmin=0.0 if metric in ("accuracy", "lang_mass", "lang_share") else None,
        center=0.0 if metric == "score" else None,
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

    from seedscope.core.plots import run_colors, set_log_step_axis

    runs = list(run_order or dict.fromkeys(emergence["run"]))
    colors = run_colors(runs)
    labels = _run_labels(emergence)
    behaviours = [b for b in BEHAVIOURS if b in set(emergence["behaviour"])]
    fig, ax = plt.subplots(figsize=(7.2, 0.5 * len(behaviours) + 2.6), layout="constrained")
    offsets = np.linspace(-0.25, 0.25, max(len(runs), 1))
    for k, run in enumerate(runs):
        part = emergence[emergence["run"] == run].set_index("behaviour")
        part = part[part.index.isin(behaviours)]
        y = np.array([behaviours.index(b) + offsets[k] for b in part.index])
        done = part["emergence_step"].notna().to_numpy()
        ax.scatter(part["emergence_step"][done], y[done], color=colors[run],
                   label=labels.get(run, run), s=28, zorder=3)  # fmt: skip
        if "last_step" in part.columns and (~done).any():
            # censored: not emerged by the last checkpoint, drawn there as an open arrow
            ax.scatter(part["last_step"][~done], y[~done], facecolors="none",
                       edgecolors=colors[run], marker=">", s=40, zorder=3)  # fmt: skip
    ax.set_yticks(range(len(behaviours)))
    ax.set_yticklabels(behaviours)
    steps = pd.concat([emergence["emergence_step"], emergence.get("last_step", pd.Series())])
    set_log_step_axis(ax, steps.dropna(), "emergence step (training step, log scale)")
    ax.set_ylabel("behaviour")
    never = emergence[emergence["emergence_step"].isna()]
    title = "Emergence step per behaviour and run"
    if len(never):
        title += f"\n(open >: {len(never)} run x behaviour pairs censored, not emerged by the end)"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=9, loc="outside lower center", ncol=2)
    return fig


def plot_size_comparison(table: pd.DataFrame, metric: str = "accuracy", group: str = "all"):
    """Per behaviour, the metric over training per size: mean over seeds (line) and the
    min-max band across seeds."""
    import matplotlib.pyplot as plt

    from seedscope.core.plots import set_log_step_axis, size_colors

    if "size" not in table.columns:
        raise SeedscopeError("The table has no `size` column.", "build it with suite=...")
    sub = table[(table["metric"] == metric) & (table["group"] == group)]
    behaviours = [b for b in BEHAVIOURS if b in set(sub["behaviour"])]
    sizes = list(dict.fromkeys(sub["size"]))
    colors = size_colors(sizes)
    ncol = min(2, max(len(behaviours), 1))
    nrow = int(np.ceil(len(behaviours) / ncol)) or 1
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.6 * ncol, 2.6 * nrow + 0.6), squeeze=False, layout="constrained"
    )
    for ax, behaviour in zip(axes.flat, behaviours, strict=False):
        part = sub[sub["behaviour"] == behaviour]
        for size in sizes:
            g = part[part["size"] == size].groupby("step")["value"].agg(["mean", "min", "max"])
            ax.plot(g.index, g["mean"], color=colors[size], label=f"{size} (mean of seeds)")
            ax.fill_between(g.index, g["min"], g["max"], color=colors[size], alpha=0.2)
        set_log_step_axis(ax, part["step"])
        ax.set_title(behaviour)
    for ax in list(axes.flat)[len(behaviours) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=9)
    fig.supylabel(_METRIC_UNITS.get(metric, metric))
    fig.suptitle(f"{metric} by model size: mean over seeds, band = min-max across seeds")
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


# The version of the behaviour probe's tables: part of its digest, so tables a sweep made
# with older scoring code are recomputed, not reused.
PROBE_FORMAT = 1


@lru_cache(maxsize=4)
def _probe_tokenizer(tokenizer_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@dataclass(frozen=True, eq=False)
class BehaviourProbe:
    """The battery scored on one checkpoint inside its sweep unit (`sweep.CheckpointProbe`):
    tables `scores` (`score_items`, after `fit_to_context` at the model's context) and
    `dropped` (items per behaviour that did not fit)."""

    items: tuple[ProbeItem, ...]
    tokenizer_dir: str
    lexicons: Mapping[str, Sequence[str]]
    letters: Mapping[str, str] | None
    scoring: str
    batch_size: int
    steps: frozenset[int]
    threads: int = 1  # torch threads while measuring (in the digest: sums may differ)
    name: str = "behaviours"

    def digest(self) -> str:
        import hashlib
        import json

        files = folder_files(self.tokenizer_dir)
        payload = {
            "format": PROBE_FORMAT,  # raise when score_items or the tables change
            "items": [
                [i.behaviour, i.prompt, i.correct, list(i.alternatives), i.group, i.language,
                 i.first_copy, json.dumps(i.meta, sort_keys=True, default=str)]
                for i in self.items
            ],
            "lexicons": {k: list(v) for k, v in self.lexicons.items()},
            "letters": dict(self.letters) if self.letters else None,
            "scoring": self.scoring,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "tokenizer": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        }  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def measure(self, model: Any) -> dict[str, pd.DataFrame]:
        with torch_threads(self.threads):
            return self._measure(model)

    def _measure(self, model: Any) -> dict[str, pd.DataFrame]:
        tokenizer = _probe_tokenizer(self.tokenizer_dir)
        language_map = language_token_map(tokenizer, self.lexicons, self.letters)
        n_ctx = model_context(model)
        items, dropped = fit_to_context(self.items, tokenizer, n_ctx or 10**9)
        scores = score_items(
            model, tokenizer, items, self.batch_size, "cpu", language_map, self.scoring
        )
        return {
            "scores": scores,
            "dropped": pd.DataFrame(
                {"behaviour": list(dropped), "n_dropped": list(dropped.values())},
                columns=["behaviour", "n_dropped"],
            ),
        }
