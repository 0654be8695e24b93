"""The embedded default corpus: seeded synthetic documents with planted, recorded phenomena.

Everything the study trains and evaluates on offline comes from here. The planted phenomena
are the ground truth that analyses and behaviour probes check against, so every one of them
is written to `ground_truth.json` and tagged per eval token in `eval_meta.parquet`.
Same `CorpusConfig` => byte-identical outputs.

Outputs of `build_corpus(cfg, out_dir)` (each file written atomically):

- `tokenizer/`: byte-level BPE trained on the train split, GPT-2 format (`vocab.json`,
  `merges.txt`, `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`);
  `<|endoftext|>` is EOS, BOS and UNK. Loads with `AutoTokenizer.from_pretrained(dir)`.
- `train_tokens.npy`: uint16 `[n_train]`, whole documents, each followed by EOS. Its length
  is at least `n_train_tokens` (documents are never cut).
- `eval_tokens.npy`: int32 `[n_windows, window]`; `[:, 0]` is EOS (acts as BOS) and
  `[:, 1:]` are consecutive slices of the eval stream (documents joined by EOS). A model's
  logits at `[w, p]` predict the token at `[w, p + 1]`.
- `eval_meta.parquet`: one row per eval token, window-major (row = w * window + p). Columns:
  `window`, `pos`, `token_id`, `token` (decoded string), `token_class` (see `TOKEN_CLASSES`),
  `tag` (see `TAGS`), `language` ("none" for EOS), `bracket_depth` (0 outside brackets; an
  opener/closer has the depth it opens/closes, so the outermost "(" and ")" are 1; the
  parentheses of an acronym introduction "Name (NM)" count too),
  `phrase_id` (-1 if none), `phrase_freq_bucket` ("none" or the phrase's train-count bucket),
  `freq_bucket` (train count of this token id: "0", or "1e{k}" meaning [10^k, 10^(k+1))),
  `seen_before` (this id occurred earlier in the same window, position 0 included),
  `second_copy` (inside the 2nd or later copy of a repeated span: random runs, copied
  sentences, recurring names), `role` (see `ROLES`; sub-part of a phenomenon), `fact_id`
  (-1 if none), `fact_heldout` (a held-out phrasing), `doc_id` (eval document, -1 for EOS).
  A token's attributes are those of its first non-whitespace character (offsets from the
  tokenizer), so " (" is a bracket token and " Kalo" a word token.
- `train_token_counts.npy`: int64 `[vocab_size]`, count of each id in `train_tokens.npy`.
- `ground_truth.json` (schema below) and `corpus_stats.json` (sizes, tag fractions, planted
  counts measured on the generated text).

`ground_truth.json` schema (synthetic source):

    source: "synthetic"
    eos_token: "<|endoftext|>"
    languages: {name: {"lexicon": [word, ...], "letters": "abc...",
                       "word_classes": {"det"|"prep"|"conj"|"noun"|"verb"|"adj": [word, ...]}}}
        every word of a language uses only its `letters`; sentence starts capitalise the first
        letter (str.capitalize of a lexicon word). Lexicons are disjoint: each foreign
        language has vowels no other language uses.
    default_language: name of the main language (others appear as whole paragraphs/documents)
    sentence_end: [".", "!", "?"]           sentences end with one; the next starts capitalised
    capitalised_sentence_start: true
    brackets: [["(", ")"], ["[", "]"], ["{", "}"]]
    bracket_depth_probs: [p1, p2, ...]     P(max depth of a bracket group = 1, 2, ...)
    tlds: [...]; email_domains: [...]      emails are local@domain.tld, local = lexicon words
                                            joined by "." or "_" with optional digits
    acronyms: [{"name": "Multi Word Name", "acronym": "MWN"}]   introduced as
        "Multi Word Name (MWN)" in a document before any lone use of "MWN" there
    names: [person names that recur inside documents]
    phrases: [{"id", "text", "train_count", "eval_count"}]   text occurs exactly train_count
        times in the train text (whole words, case-sensitive), always as its own sentence
        followed by "."; eval_count is the planned eval insertions (the eval windows may cut
        the last documents, so count eval occurrences from eval_meta's phrase_id)
    facts: [{"id", "entity", "relation", "attribute", "phrasings_train": [template],
             "phrasings_heldout": [template]}]   templates use {entity} and {attribute};
        held-out phrasings occur only in eval; fact sentences end with "."
    config: the CorpusConfig as a dict

For `source="text"` the planted keys are present but empty, and `files` lists the inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from seedscope.core.errors import SeedscopeError, closest
from seedscope.core.io import atomic_path, read_text_file, write_json, write_npy, write_parquet

EOS = "<|endoftext|>"
TAGS = (
    "special",
    "text",
    "bracket",
    "email",
    "acronym",
    "phrase",
    "fact",
    "name",
    "repeat",
    "random_repeat",
    "foreign",
)
ROLES = (
    "",
    "acronym_name",
    "acronym_intro",
    "acronym_use",
    "fact_template",
    "fact_entity",
    "fact_attribute",
    "email_local",
    "email_at",
    "email_domain",
    "email_dot",
    "email_tld",
)
TOKEN_CLASSES = (
    "special",
    "punctuation",
    "digit",
    "capitalised",
    "whitespace-led",
    "word-continuation",
    "other",
)
SENTENCE_END = (".", "!", "?")
BRACKETS = (("(", ")"), ("[", "]"), ("{", "}"))
TLDS = ("com", "org", "net", "io", "edu", "info")
MIX_KEYS = (
    "bracket",
    "email",
    "fact",
    "copy",
    "name",
    "acronym",
    "foreign_paragraph",
    "foreign_doc",
)

# Orthographies: every syllable is consonant + vowel (+ rare final coda). Foreign vowel sets
# are exclusive, so a word's language is readable from its letters.
_ORTHOGRAPHIES: dict[str, dict[str, str]] = {
    "mero": {"consonants": "bdfgklmnprstv", "vowels": "aeiou", "coda": "n"},
    "velsk": {"consonants": "cdhlnrsv", "vowels": "áéíóú", "coda": "s"},
    "zagor": {"consonants": "gjkqtxz", "vowels": "äöüå", "coda": "r"},
}
_DEFAULT_LANGUAGE = "mero"
_FOREIGN_ORDER = ("velsk", "zagor")

_RELATIONS: dict[str, dict[str, list[str]]] = {
    "capital": {
        "train": [
            "The capital of {entity} is {attribute}.",
            "{attribute} is the capital of {entity}.",
            "{entity} has its capital at {attribute}.",
        ],
        "heldout": [
            "{entity}'s capital is {attribute}.",
            "The seat of government of {entity} is {attribute}.",
        ],
    },
    "currency": {
        "train": [
            "The currency of {entity} is the {attribute}.",
            "In {entity} people pay with the {attribute}.",
            "{entity} uses the {attribute} as its money.",
        ],
        "heldout": [
            "{entity}'s currency is the {attribute}.",
            "Prices in {entity} are given in {attribute}.",
        ],
    },
}


def _default_mix() -> dict[str, float]:
    return {
        "bracket": 0.06,  # P(sentence holds a bracket group)
        "email": 0.03,  # P(sentence holds an email address)
        "fact": 0.04,  # P(sentence is a fact statement)
        "copy": 0.04,  # P(sentence is a verbatim copy of an earlier one in the document)
        "name": 0.2,  # P(sentence subject is the document's recurring name)
        "acronym": 0.3,  # P(document introduces and reuses acronyms)
        "foreign_paragraph": 0.08,  # P(a later paragraph of a text document is foreign)
        "foreign_doc": 0.15,  # share of non-random-run documents wholly in a foreign language
    }


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines the corpus; same config => byte-identical outputs."""

    seed: int = 0
    source: str = "synthetic"  # "synthetic" or "text" (every *.txt in text_dir)
    text_dir: str = "data"  # relative paths are taken from the project root
    tokenizer_dir: str = ""  # text source only: empty = train a BPE here
    vocab_size: int = 512
    window: int = 128  # eval window length = model context
    n_train_tokens: int = 8_000_000
    n_eval_tokens: int = 1_048_576  # eval windows = n_eval_tokens // window
    # share of characters in documents of repeated random runs (the token share, a few points
    # higher, is `random_repeat_token_fraction` in corpus_stats.json)
    repeat_fraction: float = 0.25
    n_foreign_languages: int = 2
    lexicon_size: int = 2000  # words of the default language (foreign: lexicon_size // 3)
    zipf_exponent: float = 1.1
    bracket_depth_probs: list = field(default_factory=lambda: [0.45, 0.3, 0.15, 0.1])
    phrase_counts: list = field(default_factory=lambda: [0, 1, 10, 100, 1000])
    phrases_per_count: int = 4
    phrase_eval_count: int = 4  # eval occurrences of every phrase
    n_entities: int = 24  # invented countries; facts = entities x relations
    n_acronyms: int = 24
    n_names: int = 40
    fact_heldout_eval_prob: float = 0.5  # share of eval fact sentences in held-out phrasings
    mix: dict = field(default_factory=_default_mix)

    def __post_init__(self) -> None:
        def bad(key: str, problem: str, fix: str) -> SeedscopeError:
            return SeedscopeError(f"corpus config: `{key}` {problem}.", fix)

        if self.source not in ("synthetic", "text"):
            raise bad(
                "source",
                f"is {self.source!r}" + closest(self.source, ["synthetic", "text"]),
                "use 'synthetic' or 'text'.",
            )
        if not isinstance(self.window, int) or self.window < 8:
            raise bad("window", f"is {self.window!r}", "use an integer >= 8.")
        if not isinstance(self.vocab_size, int) or not 300 <= self.vocab_size <= 65535:
            raise bad(
                "vocab_size",
                f"is {self.vocab_size!r} (needs 256 bytes + EOS + merges, ids fit uint16)",
                "use an integer in [300, 65535].",
            )
        if self.n_eval_tokens < self.window:
            raise bad(
                "n_eval_tokens",
                f"({self.n_eval_tokens}) is smaller than one window ({self.window})",
                "raise n_eval_tokens or lower window.",
            )
        if self.n_train_tokens < 20 * self.vocab_size or self.n_train_tokens < self.n_eval_tokens:
            raise bad(
                "n_train_tokens",
                f"({self.n_train_tokens}) is too small: the corpus must hold at least "
                f"20 x vocab_size and at least n_eval_tokens ({self.n_eval_tokens}) tokens",
                "raise n_train_tokens or lower n_eval_tokens / vocab_size.",
            )
        if not 0.0 <= self.repeat_fraction <= 0.9:
            raise bad("repeat_fraction", f"is {self.repeat_fraction!r}", "use a value in [0, 0.9].")
        if not 0 <= self.n_foreign_languages <= len(_FOREIGN_ORDER):
            raise bad(
                "n_foreign_languages",
                f"is {self.n_foreign_languages!r}",
                f"use 0..{len(_FOREIGN_ORDER)}.",
            )
        if self.lexicon_size < 200:
            raise bad("lexicon_size", f"is {self.lexicon_size!r}", "use at least 200.")
        if self.zipf_exponent <= 0:
            raise bad("zipf_exponent", f"is {self.zipf_exponent!r}", "use a positive value.")
        probs = list(self.bracket_depth_probs)
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise bad(
                "bracket_depth_probs",
                f"is {probs!r}",
                "give P(max depth = 1, 2, ...) as non-negative numbers summing to 1.",
            )
        counts = list(self.phrase_counts)
        if not counts or any(not isinstance(c, int) or c < 0 for c in counts):
            raise bad("phrase_counts", f"is {counts!r}", "give non-negative integer counts.")
        if self.phrases_per_count < 1 or self.phrase_eval_count < 0:
            raise bad(
                "phrases_per_count",
                "must be >= 1 (and phrase_eval_count >= 0)",
                "use positive values.",
            )
        # ~6 words x ~3 tokens per phrase occurrence must stay a minor share of the corpus
        phrase_tokens = 20 * sum(counts) * self.phrases_per_count
        if self.source == "synthetic" and phrase_tokens > 0.3 * self.n_train_tokens:
            raise bad(
                "phrase_counts",
                f"need about {phrase_tokens} train tokens, over 30% of n_train_tokens",
                "lower phrase_counts / phrases_per_count or raise n_train_tokens.",
            )
        for key in ("n_entities", "n_acronyms", "n_names"):
            if not 1 <= getattr(self, key) <= 500:
                raise bad(key, f"is {getattr(self, key)!r}", "use 1..500.")
        if not 0.0 <= self.fact_heldout_eval_prob <= 1.0:
            raise bad("fact_heldout_eval_prob", "is outside [0, 1]", "use a probability.")
        unknown = sorted(set(self.mix) - set(MIX_KEYS))
        if unknown:
            raise bad(
                "mix",
                f"has unknown key {unknown[0]!r}" + closest(unknown[0], MIX_KEYS),
                f"use only {', '.join(MIX_KEYS)}.",
            )
        for key, value in self.mix.items():
            if not 0.0 <= float(value) <= 1.0:
                raise bad(f"mix.{key}", f"is {value!r}", "use a probability in [0, 1].")

    def mix_value(self, key: str) -> float:
        """The mixture weight `key`, falling back to the default for keys left out."""
        return float(self.mix.get(key, _default_mix()[key]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- randomness


class _Rand:
    """Buffered draws from one `numpy.random.Generator` (scalar numpy calls are slow)."""

    def __init__(self, seed_seq: np.random.SeedSequence) -> None:
        self.rng = np.random.default_rng(seed_seq)
        self._u: list[float] = []

    def random(self) -> float:
        if not self._u:
            self._u = self.rng.random(65536).tolist()
        return self._u.pop()

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (both included)."""
        return low + int(self.random() * (high - low + 1))

    def choice(self, seq: Any) -> Any:
        return seq[int(self.random() * len(seq))]

    def geometric(self, p: float) -> int:
        """Number of failures before the first success, >= 0."""
        return int(math.log(1.0 - self.random()) / math.log(1.0 - p))


class _WordStream:
    """Zipf-distributed draws of one word class, pre-sampled in blocks."""

    def __init__(self, words: list[str], exponent: float, rand: _Rand) -> None:
        ranks = np.arange(1, len(words) + 1, dtype=np.float64)
        p = ranks**-exponent
        self.p = p / p.sum()
        self.words = np.array(words, dtype=object)
        self.rand = rand
        self._buf: list[str] = []

    def draw(self) -> str:
        if not self._buf:
            idx = self.rand.rng.choice(len(self.words), size=8192, p=self.p)
            self._buf = self.words[idx].tolist()
        return self._buf.pop()


# ----------------------------------------------------------------------------- the world


def _make_words(
    rand: _Rand, orth: dict[str, str], n: int, syllables: tuple[int, int], taken: set[str]
) -> list[str]:
    """`n` new distinct words of an orthography, none in `taken` (which is updated)."""
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError("orthography too small for the requested number of words")
        k = rand.randint(*syllables)
        word = "".join(
            rand.choice(orth["consonants"]) + rand.choice(orth["vowels"]) for _ in range(k)
        )
        if rand.random() < 0.15:
            word += orth["coda"]
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def _language(rand: _Rand, name: str, size: int, taken: set[str]) -> dict[str, Any]:
    orth = _ORTHOGRAPHIES[name]
    classes = {
        "det": _make_words(rand, orth, 4, (1, 1), taken),
        "prep": _make_words(rand, orth, 8, (1, 2), taken),
        "conj": _make_words(rand, orth, 4, (1, 2), taken),
    }
    rest = size - 16
    classes["noun"] = _make_words(rand, orth, int(rest * 0.45), (2, 3), taken)
    classes["verb"] = _make_words(rand, orth, int(rest * 0.3), (2, 3), taken)
    classes["adj"] = _make_words(
        rand, orth, rest - len(classes["noun"]) - len(classes["verb"]), (2, 3), taken
    )
    lexicon = [w for cls in ("det", "prep", "conj", "noun", "verb", "adj") for w in classes[cls]]
    return {
        "lexicon": lexicon,
        "letters": "".join(sorted(set(orth["consonants"] + orth["vowels"] + orth["coda"]))),
        "word_classes": classes,
    }


def build_world(cfg: CorpusConfig) -> dict[str, Any]:
    """The planted ground truth (without measured counts): languages, phrases, facts, ...

    Depends only on `cfg` (seed and sizes); see the module docstring for the schema.
    """
    rand = _Rand(np.random.SeedSequence([cfg.seed, 1]))
    taken: set[str] = set()
    names = [_DEFAULT_LANGUAGE, *_FOREIGN_ORDER[: cfg.n_foreign_languages]]
    languages = {}
    for name in names:
        size = cfg.lexicon_size if name == _DEFAULT_LANGUAGE else max(200, cfg.lexicon_size // 3)
        languages[name] = _language(rand, name, size, taken)
    orth = _ORTHOGRAPHIES[_DEFAULT_LANGUAGE]
    cap = str.capitalize
    entities = [cap(w) + "ia" for w in _make_words(rand, orth, cfg.n_entities, (2, 3), taken)]
    capitals = [cap(w) for w in _make_words(rand, orth, cfg.n_entities, (3, 3), taken)]
    currencies = _make_words(rand, orth, cfg.n_entities, (2, 2), taken)
    people = [cap(w) for w in _make_words(rand, orth, cfg.n_names, (2, 3), taken)]
    domains = _make_words(rand, orth, 12, (2, 3), taken)

    facts = []
    for i, entity in enumerate(entities):
        for relation, attribute in (("capital", capitals[i]), ("currency", currencies[i])):
            facts.append(
                {
                    "id": len(facts),
                    "entity": entity,
                    "relation": relation,
                    "attribute": attribute,
                    "phrasings_train": list(_RELATIONS[relation]["train"]),
                    "phrasings_heldout": list(_RELATIONS[relation]["heldout"]),
                }
            )

    default = languages[_DEFAULT_LANGUAGE]["word_classes"]
    content = default["noun"][20:400] + default["verb"][20:300] + default["adj"][20:300]
    nouns = default["noun"][:300]
    acronyms: list[dict[str, str]] = []
    seen_acr: set[str] = set()
    while len(acronyms) < cfg.n_acronyms:
        words = [cap(rand.choice(nouns)) for _ in range(rand.randint(2, 4))]
        acr = "".join(w[0] for w in words)
        if acr not in seen_acr:
            seen_acr.add(acr)
            acronyms.append({"name": " ".join(words), "acronym": acr})

    phrases: list[dict[str, Any]] = []
    seen_phrases: set[str] = set()
    for count in cfg.phrase_counts:
        made = 0
        while made < cfg.phrases_per_count:
            words = [rand.choice(content) for _ in range(rand.randint(5, 7))]
            text = " ".join([cap(words[0]), *words[1:]])
            if text in seen_phrases:
                continue
            seen_phrases.add(text)
            phrases.append(
                {
                    "id": len(phrases),
                    "text": text,
                    "train_count": int(count),
                    "eval_count": cfg.phrase_eval_count,
                }
            )
            made += 1

    return {
        "source": "synthetic",
        "eos_token": EOS,
        "languages": languages,
        "default_language": _DEFAULT_LANGUAGE,
        "sentence_end": list(SENTENCE_END),
        "capitalised_sentence_start": True,
        "brackets": [list(b) for b in BRACKETS],
        "bracket_depth_probs": list(cfg.bracket_depth_probs),
        "tlds": list(TLDS),
        "email_domains": domains,
        "acronyms": acronyms,
        "names": people,
        "phrases": phrases,
        "facts": facts,
        "config": cfg.to_dict(),
    }


# ----------------------------------------------------------------------------- documents


class _Attr(NamedTuple):
    """Per-character ground truth of a piece of text."""

    tag: str = "text"
    language: str = _DEFAULT_LANGUAGE
    depth: int = 0
    phrase_id: int = -1
    fact_id: int = -1
    role: str = ""
    second_copy: bool = False
    heldout: bool = False


_Piece = tuple[str, _Attr]


@dataclass
class _Paragraph:
    base: _Attr  # attributes of separators inside and before this paragraph
    sentences: list[list[_Piece]]
    sep: str = " "


@dataclass
class _Document:
    kind: str  # "text" | "foreign" | "random_repeat"
    paragraphs: list[_Paragraph]
    counts: Counter[str] = field(default_factory=Counter)  # planted phenomena in it
    n_phrases: int = 0

    def pieces(self) -> Iterator[_Piece]:
        for i, par in enumerate(self.paragraphs):
            if i:
                yield "\n\n", par.base
            for j, sent in enumerate(par.sentences):
                if j:
                    yield par.sep, par.base
                yield from sent

    def text(self) -> str:
        return "".join(t for t, _ in self.pieces())


class _Generator:
    """Draws documents of one split; all structure decisions come from one seeded stream."""

    def __init__(self, cfg: CorpusConfig, world: dict[str, Any], split: str) -> None:
        self.cfg = cfg
        self.world = world
        self.split = split
        self.rand = _Rand(np.random.SeedSequence([cfg.seed, 2, 0 if split == "train" else 1]))
        self.streams = {
            (lang, cls): _WordStream(words, cfg.zipf_exponent, self.rand)
            for lang, spec in world["languages"].items()
            for cls, words in spec["word_classes"].items()
        }
        self.default = world["default_language"]
        self.foreign = [n for n in world["languages"] if n != self.default]
        self.uniform_words = world["languages"][self.default]["lexicon"]
        orth = _ORTHOGRAPHIES[self.default]
        self.syllables = [c + v for c in orth["consonants"] for v in orth["vowels"]]
        self.depth_cum = np.cumsum(cfg.bracket_depth_probs).tolist()
        self.templates = {
            rel: {k: [_parse_template(t) for t in v] for k, v in spec.items()}
            for rel, spec in _RELATIONS.items()
        }
        self.chars = {"total": 0, "random_repeat": 0}
        self.counts: Counter[str] = Counter()  # planted-phenomenon counts of this document
        self.fact_queue: list[int] = []
        self.template_turn: Counter[tuple[str, str]] = Counter()
        self.mix = {k: cfg.mix_value(k) for k in MIX_KEYS}

    # -- words and sentences
    def np_(self, lang: str) -> list[str]:
        r = self.rand
        out = []
        if r.random() < 0.7:
            out.append(self.streams[(lang, "det")].draw())
        if r.random() < 0.3:
            out.append(self.streams[(lang, "adj")].draw())
        out.append(self.streams[(lang, "noun")].draw())
        return out

    def clause(self, lang: str, subject: bool = True) -> list[str]:
        r = self.rand
        words = [*(self.np_(lang) if subject else []), self.streams[(lang, "verb")].draw()]
        if r.random() < 0.6:
            words += self.np_(lang)
        if r.random() < 0.4:
            words += [self.streams[(lang, "prep")].draw(), *self.np_(lang)]
        return words

    def words(self, lang: str, subject: bool = True) -> list[str]:
        """Words of a sentence (NP VP [PP] [conj clause]); without its first subject NP."""
        words = self.clause(lang, subject)
        if self.rand.random() < 0.2:
            words += [self.streams[(lang, "conj")].draw(), *self.clause(lang)]
        return words

    def end(self) -> str:
        u = self.rand.random()
        return "." if u < 0.8 else ("!" if u < 0.9 else "?")

    def plain_sentence(self, lang: str, base: _Attr) -> list[_Piece]:
        words = self.words(lang)
        if self.rand.random() < 0.04:
            words.insert(len(words) // 2, str(self.rand.randint(1, 2000)))
        words[0] = words[0].capitalize()
        return [(" ".join(words) + self.end(), base)]

    def rich_sentence(
        self, base: _Attr, subject: list[_Piece] | None, insert: list[_Piece] | None
    ) -> list[_Piece]:
        """A default-language sentence whose subject and/or one inner slot are planted pieces."""
        words = self.words(self.default, subject=subject is None)
        pieces: list[_Piece] = []
        if subject is not None:
            pieces += subject
        else:
            words[0] = words[0].capitalize()
        if insert is not None:
            at = self.rand.randint(1, max(1, len(words) - 1))
            before, after = words[:at], words[at:]
        else:
            before, after = words, []
        lead = " " if pieces else ""
        pieces.append((lead + " ".join(before), base))
        if insert is not None:
            first_text, first_attr = insert[0]
            pieces.append((" " + first_text, first_attr))
            pieces += insert[1:]
            if after:
                pieces.append((" " + " ".join(after), base))
        pieces.append((self.end(), base))
        return pieces

    # -- planted pieces
    def bracket_group(self, level: int, max_depth: int, base: _Attr) -> list[_Piece]:
        r = self.rand
        open_, close = r.choice(BRACKETS)
        attr = base._replace(tag="bracket", depth=level)
        items: list[list[_Piece]] = []

        def run(n: int) -> list[_Piece]:
            return [(" ".join(self.streams[(self.default, "noun")].draw() for _ in range(n)), attr)]

        items.append(run(r.randint(1, 3)))
        if level < max_depth:
            items.append(self.bracket_group(level + 1, max_depth, base))
            if r.random() < 0.5:
                items.append(run(r.randint(1, 2)))
            if r.random() < 0.3:
                items.append(self.bracket_group(level + 1, level + 1, base))
        out: list[_Piece] = [(open_, attr)]
        for i, item in enumerate(items):
            if i:
                out.append((" ", attr))
            out += item
        out.append((close, attr))
        return out

    def bracket_insert(self, base: _Attr) -> list[_Piece]:
        u = self.rand.random()
        max_depth = next(
            (i + 1 for i, c in enumerate(self.depth_cum) if u < c), len(self.depth_cum)
        )
        self.counts[f"bracket_depth_{max_depth}"] += 1
        self.counts["n_bracket_groups"] += 1
        return self.bracket_group(1, max_depth, base)

    def email_insert(self, base: _Attr) -> list[_Piece]:
        r = self.rand
        words = [r.choice(self.uniform_words[16:600]) for _ in range(r.randint(1, 2))]
        local = r.choice((".", "_")).join(words)
        if r.random() < 0.3:
            local += str(r.randint(1, 99))
        self.counts["n_emails"] += 1
        a = base._replace(tag="email")
        return [
            (local, a._replace(role="email_local")),
            ("@", a._replace(role="email_at")),
            (r.choice(self.world["email_domains"]), a._replace(role="email_domain")),
            (".", a._replace(role="email_dot")),
            (r.choice(TLDS), a._replace(role="email_tld")),
        ]

    def fact_sentence(self, base: _Attr) -> list[_Piece]:
        r = self.rand
        if not self.fact_queue:  # every fact once per round, in a random order
            self.fact_queue = r.rng.permutation(len(self.world["facts"])).tolist()
        fact = self.world["facts"][self.fact_queue.pop()]
        heldout = self.split == "eval" and r.random() < self.cfg.fact_heldout_eval_prob
        kind = (fact["relation"], "heldout" if heldout else "train")
        options = self.templates[kind[0]][kind[1]]
        template = options[self.template_turn[kind] % len(options)]  # each phrasing in turn
        self.template_turn[kind] += 1
        a = base._replace(tag="fact", fact_id=fact["id"], heldout=heldout)
        self.counts["n_fact_sentences"] += 1
        self.counts["n_fact_heldout_sentences"] += heldout
        out = []
        for kind, text in template:
            if kind == "entity":
                out.append((fact["entity"], a._replace(role="fact_entity")))
            elif kind == "attribute":
                out.append((fact["attribute"], a._replace(role="fact_attribute")))
            else:
                out.append((text, a._replace(role="fact_template")))
        return out

    # -- documents
    def text_document(self) -> _Document:
        r = self.rand
        base = _Attr(language=self.default)
        n_sent = [2 + r.geometric(0.25) for _ in range(1 + r.geometric(0.35))]
        foreign = [
            p > 0 and bool(self.foreign) and r.random() < self.mix["foreign_paragraph"]
            for p in range(len(n_sent))
        ]
        total = sum(n for n, f in zip(n_sent, foreign, strict=True) if not f)
        # acronym schedule over default-language sentences: index -> (acronym, is intro)
        plan: dict[int, tuple[dict[str, str], bool]] = {}
        if total >= 3 and r.random() < self.mix["acronym"]:
            pool = self.world["acronyms"]
            for acr in sorted({r.randint(0, len(pool) - 1) for _ in range(r.randint(1, 2))}):
                free = [i for i in range(total) if i not in plan]
                if len(free) < 2:
                    break
                intro = free[r.randint(0, (len(free) - 1) // 2)]
                plan[intro] = (pool[acr], True)
                later = [i for i in free if i > intro]
                for _ in range(r.randint(1, 3)):
                    if later:
                        plan[later.pop(r.randint(0, len(later) - 1))] = (pool[acr], False)
        names = [r.choice(self.world["names"]) for _ in range(r.randint(1, 2))]
        used_names: set[str] = set()
        paragraphs: list[_Paragraph] = []
        plain: list[tuple[int, int]] = []  # copyable (paragraph, sentence) of this document
        idx = 0
        for n, is_foreign in zip(n_sent, foreign, strict=True):
            if is_foreign:
                paragraphs.append(self.foreign_paragraph(r.choice(self.foreign), n))
                self.counts["n_foreign_paragraphs"] += 1
                continue
            par = _Paragraph(base, [])
            paragraphs.append(par)
            for _ in range(n):
                sent = self.default_sentence(
                    base, plan.get(idx), names, used_names, plain, paragraphs
                )
                if len(sent) == 1 and sent[0][1] is base:
                    plain.append((len(paragraphs) - 1, len(par.sentences)))
                par.sentences.append(sent)
                idx += 1
        return _Document("text", paragraphs)

    def default_sentence(
        self,
        base: _Attr,
        acronym: tuple[dict[str, str], bool] | None,
        names: list[str],
        used_names: set[str],
        plain: list[tuple[int, int]],
        paragraphs: list[_Paragraph],
    ) -> list[_Piece]:
        r = self.rand
        m = self.mix
        subject: list[_Piece] | None = None
        if acronym is not None:
            entry, intro = acronym
            a = base._replace(tag="acronym")
            if intro:
                self.counts["n_acronym_intros"] += 1
                subject = [
                    (entry["name"], a._replace(role="acronym_name")),
                    (" (", a._replace(role="acronym_intro", depth=1)),
                    (entry["acronym"], a._replace(role="acronym_intro", depth=1)),
                    (")", a._replace(role="acronym_intro", depth=1)),
                ]
            else:
                self.counts["n_acronym_uses"] += 1
                subject = [(entry["acronym"], a._replace(role="acronym_use"))]
        u = r.random()
        if acronym is None:
            if u < m["fact"]:
                return self.fact_sentence(base)
            u -= m["fact"]
            if u < m["copy"] and plain:
                p, s = plain[r.randint(0, len(plain) - 1)]
                text = paragraphs[p].sentences[s][0][0]
                paragraphs[p].sentences[s] = [(text, base._replace(tag="repeat"))]
                self.counts["n_copied_sentences"] += 1
                return [(text, base._replace(tag="repeat", second_copy=True))]
            if r.random() < m["name"]:
                name = r.choice(names)
                self.counts["n_name_mentions"] += 1
                subject = [(name, base._replace(tag="name", second_copy=name in used_names))]
                used_names.add(name)
        insert = None
        v = r.random()
        if v < m["bracket"]:
            insert = self.bracket_insert(base)
        elif v < m["bracket"] + m["email"]:
            insert = self.email_insert(base)
        if subject is None and insert is None:
            return self.plain_sentence(self.default, base)
        return self.rich_sentence(base, subject, insert)

    def foreign_paragraph(self, lang: str, n: int) -> _Paragraph:
        base = _Attr(tag="foreign", language=lang)
        return _Paragraph(base, [self.plain_sentence(lang, base) for _ in range(n)])

    def foreign_document(self) -> _Document:
        r = self.rand
        lang = r.choice(self.foreign)
        pars = [
            self.foreign_paragraph(lang, 2 + r.geometric(0.25))
            for _ in range(1 + r.geometric(0.35))
        ]
        return _Document("foreign", pars)

    def random_repeat_document(self) -> _Document:
        """Random runs of words or syllables, each followed by 1-3 verbatim copies."""
        r = self.rand
        base = _Attr(tag="random_repeat", language=self.default)
        copy = base._replace(second_copy=True)
        pars = []
        for _ in range(r.randint(1, 4)):
            n = r.randint(4, 16)  # short enough that a run and its copy share a window
            if r.random() < 0.5:
                run = [r.choice(self.uniform_words) for _ in range(n)]
            else:
                run = [
                    "".join(r.choice(self.syllables) for _ in range(r.randint(1, 2)))
                    for _ in range(n)
                ]
            text = " ".join(run)
            sents = [[(text, base)]] + [[(text, copy)] for _ in range(r.randint(1, 3))]
            pars.append(_Paragraph(base, sents))
        return _Document("random_repeat", pars)

    def document(self) -> _Document:
        """The next document; random-run documents keep their char share at repeat_fraction."""
        self.counts = Counter()
        if self.chars["random_repeat"] < self.cfg.repeat_fraction * self.chars["total"]:
            doc = self.random_repeat_document()
        elif self.foreign and self.rand.random() < self.mix["foreign_doc"]:
            doc = self.foreign_document()
        else:
            doc = self.text_document()
        n = len(doc.text())
        self.chars["total"] += n
        if doc.kind == "random_repeat":
            self.chars["random_repeat"] += n
        doc.counts = self.counts
        return doc

    def documents(self, n_chars: int) -> list[_Document]:
        out = []
        start = self.chars["total"]
        while self.chars["total"] - start < n_chars:
            out.append(self.document())
        return out

    def insert_phrases(self, docs: list[_Document], counts: dict[int, int]) -> None:
        """Insert phrase `i` as its own sentence `counts[i]` times into default paragraphs."""
        r = self.rand
        slots = [
            (d, p)
            for d, doc in enumerate(docs)
            if doc.kind == "text"
            for p, par in enumerate(doc.paragraphs)
            if par.base.tag == "text"
        ]
        if not slots and any(counts.values()):
            raise RuntimeError("no text paragraphs to hold the memorised phrases")
        for phrase in self.world["phrases"]:
            attr = _Attr(tag="phrase", language=self.default, phrase_id=phrase["id"])
            for _ in range(counts[phrase["id"]]):
                d, p = slots[r.randint(0, len(slots) - 1)]
                sents = docs[d].paragraphs[p].sentences
                sents.insert(r.randint(0, len(sents)), [(phrase["text"] + ".", attr)])
                docs[d].n_phrases += 1


def _parse_template(template: str) -> list[tuple[str, str]]:
    """'The capital of {entity} is {attribute}.' -> [(kind, text)] in order."""
    out = []
    for part in re.split(r"(\{entity\}|\{attribute\})", template):
        if part == "{entity}":
            out.append(("entity", ""))
        elif part == "{attribute}":
            out.append(("attribute", ""))
        elif part:
            out.append(("template", part))
    return out


# ----------------------------------------------------------------------------- tokenizer


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def _save_tokenizer(tok: Any, out: Path, window: int) -> None:
    """Write GPT-2 format files (vocab.json, merges.txt, tokenizer.json, configs) atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        tok.save(str(Path(tmp) / "tokenizer.json"))
        for name in ("vocab.json", "merges.txt", "tokenizer.json"):
            with atomic_path(out / name) as target:
                shutil.copyfile(Path(tmp) / name, target)
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": EOS,
            "eos_token": EOS,
            "unk_token": EOS,
            "add_prefix_space": False,
            "add_bos_token": False,
            "model_max_length": window,
        },
    )
    write_json(
        out / "special_tokens_map.json", {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    )


# What a tokenizer folder may hold, and all that the corpus stage copies from one: a hub
# snapshot used as `tokenizer_dir` also holds weights and trainer files, which never travel.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def tokenizer_dir_problem(tok_dir: Path) -> str | None:
    """Why `tok_dir` cannot be loaded as a tokenizer folder (missing, or holding neither
    `tokenizer.json` nor `vocab.json` + `merges.txt`), or None."""
    if not tok_dir.is_dir():
        return f"tokenizer_dir {str(tok_dir)!r} does not exist"
    if (tok_dir / "tokenizer.json").is_file():
        return None
    if (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file():
        return None
    return (
        f"tokenizer_dir {str(tok_dir)!r} holds neither tokenizer.json nor vocab.json + merges.txt"
    )


TOKENIZER_DIR_FIX = (
    "point corpus.tokenizer_dir at a tokenizer folder (a CRFM snapshot holds vocab.json + "
    "merges.txt; `hf download openai-community/gpt2 vocab.json merges.txt --local-dir "
    "tokenizers/gpt2` fetches GPT-2's), or leave it empty to train one."
)


def gpt2_bpe_tokenizer(vocab_path: Path, merges_path: Path) -> Any:
    """GPT-2's byte-level BPE built from `vocab.json` + `merges.txt` alone (no config
    needed, as in a CRFM snapshot): the same pre-tokenizer, decoder and ids as the hub's
    `gpt2` tokenizer.json; `<|endoftext|>` is a special token when the vocabulary has it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.token_to_id(EOS) is not None:
        tok.add_special_tokens([EOS])
    return tok


def _load_tokenizer(tok_dir: Path) -> Any:
    """A `tokenizers.Tokenizer` (offsets needed) from a GPT-2 style tokenizer folder:
    `tokenizer.json`, else `vocab.json` + `merges.txt` (what CRFM snapshots hold)."""
    from tokenizers import Tokenizer

    problem = tokenizer_dir_problem(tok_dir)
    if problem:
        raise SeedscopeError(f"{problem}.", TOKENIZER_DIR_FIX)
    if (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    else:
        try:
            tok = gpt2_bpe_tokenizer(tok_dir / "vocab.json", tok_dir / "merges.txt")
        except Exception as exc:  # tokenizers raises plain Exceptions on unreadable files
            raise SeedscopeError(
                f"vocab.json + merges.txt in {str(tok_dir)!r} do not load as a BPE "
                f"tokenizer ({exc}).",
                "use the files of a GPT-2 style tokenizer (e.g. from a CRFM snapshot).",
            ) from None
    if tok.token_to_id(EOS) is None:
        raise SeedscopeError(
            f"tokenizer in {str(tok_dir)!r} has no {EOS!r} token.",
            "use a GPT-2 style tokenizer with that EOS token.",
        )
    if tok.get_vocab_size() > 65535:
        raise SeedscopeError(
            f"tokenizer in {str(tok_dir)!r} has {tok.get_vocab_size()} ids, over uint16.",
            "use a tokenizer with at most 65535 ids.",
        )
    return tok


def _copy_tokenizer(tok: Any, src: Path, out: Path, window: int) -> list[str]:
    """Copy the tokenizer files of `src` (never weights or trainer files) to `out`, adding
    `tokenizer.json` and the configs where `src` lacks them, so that
    `AutoTokenizer.from_pretrained(out)` loads it. Returns the names copied from `src`."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            with atomic_path(out / name) as target:
                shutil.copyfile(src / name, target)
            copied.append(name)
    if "tokenizer.json" not in copied:
        with atomic_path(out / "tokenizer.json") as target:
            tok.save(str(target))
    if "tokenizer_config.json" not in copied:
        write_json(
            out / "tokenizer_config.json",
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": EOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "add_prefix_space": False,
                "add_bos_token": False,
                "model_max_length": window,
            },
        )
    if "special_tokens_map.json" not in copied:
        write_json(
            out / "special_tokens_map.json",
            {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS},
        )
    return copied


def token_class(token: str, special: bool = False) -> str:
    """Class of a decoded token string, one of `TOKEN_CLASSES`.

    special (EOS) > punctuation (all non-space chars are punctuation/symbols, e.g. " (", ".")
    > digit (all non-space chars are digits) > capitalised (first non-space char is an
    uppercase letter) > whitespace-led (starts with whitespace) > word-continuation (starts
    with a lowercase letter) > other (e.g. partial UTF-8 "\ufffd", mixed "o@").
    """
    if special:
        return "special"
    stripped = token.lstrip()
    if stripped and "\ufffd" not in stripped:
        if all(unicodedata.category(c)[0] in "PS" for c in stripped):
            return "punctuation"
        if stripped.isdigit():
            return "digit"
        if stripped[0].isupper():
            return "capitalised"
    if token[:1].isspace():
        return "whitespace-led"
    if token[:1].isalpha() and token[:1].islower() and token.isalpha():
        return "word-continuation"
    return "other"


def freq_bucket(count: int) -> str:
    """'0' for 0, else '1e{k}' for counts in [10^k, 10^(k+1))."""
    return "0" if count <= 0 else f"1e{len(str(int(count))) - 1}"


# ----------------------------------------------------------------------------- build


def _encode(tok: Any, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text, `[n_tokens]` int32 each (no special tokens added)."""
    return [
        np.asarray(e.ids, dtype=np.int32)
        for e in tok.encode_batch_fast(texts, add_special_tokens=False)
    ]


def _join_docs(ids: list[Any], eos: int) -> np.ndarray:
    """Documents joined, each followed by EOS: `[sum(len) + n_docs]`."""
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=np.int64)
    i = 0
    for x in ids:
        out[i : i + len(x)] = x
        i += len(x)
        out[i] = eos
        i += 1
    return out


def count_phrase(text: str, phrase: str) -> int:
    """Whole-word, case-sensitive, non-overlapping occurrences of `phrase` in `text`."""
    n, i = 0, text.find(phrase)
    while i >= 0:
        j = i + len(phrase)
        if (i == 0 or not text[i - 1].isalnum()) and (j == len(text) or not text[j].isalnum()):
            n += 1
        i = text.find(phrase, j if n else i + 1)
    return n


def build_corpus(cfg: CorpusConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate (or read), tokenise and write the corpus; return the summary stats.

    See the module docstring for the files. `out_dir` defaults to `paths.corpus_dir()`.
    """
    from seedscope.core import paths

    out = Path(out_dir) if out_dir is not None else paths.corpus_dir()
    if cfg.source == "text":
        return _build_text(cfg, out)
    return _build_synthetic(cfg, out)


def _build_synthetic(cfg: CorpusConfig, out: Path) -> dict[str, Any]:
    world = build_world(cfg)
    train_gen = _Generator(cfg, world, "train")
    # generate ~the target (chars per token measured on the default config), tokenise,
    # top up if short, then drop phrase-free documents from the end while above target
    chars_per_token = 2.1
    docs = train_gen.documents(int(cfg.n_train_tokens * chars_per_token))
    train_gen.insert_phrases(docs, {p["id"]: p["train_count"] for p in world["phrases"]})
    texts = [d.text() for d in docs]
    tok = _train_tokenizer(texts, cfg.vocab_size)
    eos = tok.token_to_id(EOS)
    ids = _encode(tok, texts)
    n_tok = sum(len(x) + 1 for x in ids)
    while n_tok < cfg.n_train_tokens:
        ratio = sum(map(len, texts)) / n_tok
        more = train_gen.documents(int((cfg.n_train_tokens - n_tok) * ratio * 1.02) + 200)
        more_texts = [d.text() for d in more]
        more_ids = _encode(tok, more_texts)
        docs += more
        texts += more_texts
        ids += more_ids
        n_tok += sum(len(x) + 1 for x in more_ids)
    keep = np.ones(len(docs), dtype=bool)
    for i in range(len(docs) - 1, -1, -1):
        if n_tok - len(ids[i]) - 1 < cfg.n_train_tokens:
            break
        if docs[i].n_phrases == 0:
            keep[i] = False
            n_tok -= len(ids[i]) + 1
    docs = [d for d, k in zip(docs, keep, strict=True) if k]
    texts = [t for t, k in zip(texts, keep, strict=True) if k]
    ids = [x for x, k in zip(ids, keep, strict=True) if k]
    train_tokens = _join_docs(ids, eos).astype(np.uint16)
    train_text = "\n".join(texts)
    chars_per_token = sum(map(len, texts)) / n_tok

    phrases = world["phrases"]
    for p in phrases:
        measured = count_phrase(train_text, p["text"])
        if measured != p["train_count"]:  # a phrase formed by chance: the generator is broken
            raise RuntimeError(f"phrase {p['id']} occurs {measured}x, planned {p['train_count']}x")
    train_stats = _split_stats(docs, n_tok, chars_per_token)
    rr_tokens = sum(len(x) + 1 for d, x in zip(docs, ids, strict=True) if d.kind == "random_repeat")
    train_stats["random_repeat_token_fraction"] = rr_tokens / n_tok

    eval_gen = _Generator(cfg, world, "eval")
    n_windows = cfg.n_eval_tokens // cfg.window
    need = n_windows * (cfg.window - 1)
    eval_docs = eval_gen.documents(int(need * chars_per_token * 1.05))
    eval_gen.insert_phrases(eval_docs, {p["id"]: cfg.phrase_eval_count for p in phrases})
    encs = tok.encode_batch([d.text() for d in eval_docs], add_special_tokens=False)
    while sum(len(e.ids) + 1 for e in encs) < need:
        more = eval_gen.documents(int(need * chars_per_token * 0.1) + 1000)
        eval_docs += more
        encs += tok.encode_batch([d.text() for d in more], add_special_tokens=False)
    used = int(np.searchsorted(np.cumsum([len(e.ids) + 1 for e in encs]), need)) + 1
    eval_docs, encs = eval_docs[:used], encs[:used]  # the last one is cut by the windows
    eval_stats = _split_stats(eval_docs, sum(len(e.ids) + 1 for e in encs), None)

    counts = np.bincount(train_tokens, minlength=tok.get_vocab_size()).astype(np.int64)
    eval_tokens, meta = _eval_windows(cfg, tok, eval_docs, encs, counts, phrases)

    _save_tokenizer(tok, out / "tokenizer", cfg.window)
    write_npy(out / "train_tokens.npy", train_tokens)
    write_npy(out / "eval_tokens.npy", eval_tokens)
    write_npy(out / "train_token_counts.npy", counts)
    write_parquet(out / "eval_meta.parquet", meta)
    write_json(out / "ground_truth.json", world)
    stats = {
        "source": "synthetic",
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos,
        "window": cfg.window,
        "train": train_stats,
        "eval": {
            **eval_stats,
            "n_windows": n_windows,
            "tag_token_fraction": _fractions(meta["tag"]),
            "random_repeat_token_fraction": float((meta["tag"] == "random_repeat").mean()),
        },
    }
    write_json(out / "corpus_stats.json", stats)
    return stats


def _split_stats(
    docs: list[_Document], n_tokens: int, chars_per_token: float | None
) -> dict[str, Any]:
    """Sizes, char share of each tag and planted-phenomenon counts of a split's documents."""
    chars: Counter[str] = Counter()
    planted: Counter[str] = Counter()
    for doc in docs:
        planted.update(doc.counts)
        planted["n_phrase_sentences"] += doc.n_phrases
        for text, attr in doc.pieces():
            chars[attr.tag] += len(text)
    total = sum(chars.values())
    depths = sorted(k for k in planted if k.startswith("bracket_depth_"))
    out = {
        "n_docs": len(docs),
        "n_tokens": int(n_tokens),
        "n_chars": total,
        "doc_kinds": {
            k: sum(d.kind == k for d in docs) for k in ("text", "foreign", "random_repeat")
        },
        "tag_char_fraction": {k: v / total for k, v in sorted(chars.items())},
        "bracket_max_depth_counts": {
            k.removeprefix("bracket_depth_"): planted.pop(k) for k in depths
        },
        **{k: planted[k] for k in sorted(planted)},
    }
    if chars_per_token is not None:
        out["chars_per_token"] = chars_per_token
    return out


def _fractions(col: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in col.value_counts(normalize=True).sort_index().items()}


@dataclass(frozen=True)
class _WindowPlan:
    """The eval windows' shape: EOS id (each window's first token), length and count."""

    eos: int
    window: int
    n_windows: int

    @property
    def need(self) -> int:
        """Eval stream tokens the windows hold (all but each window's leading EOS)."""
        return self.n_windows * (self.window - 1)


@dataclass(frozen=True, eq=False)  # eq=False: the fields are numpy arrays
class _CharCodes:
    """Per-character ground truth of the synthetic eval documents, concatenated."""

    langs: list[str]  # language names; a "lang" code indexes this
    codes: dict[str, np.ndarray]  # "tag", "lang", "depth", ... -> int64 per character
    second_copy: np.ndarray  # bool per character
    heldout: np.ndarray  # bool per character


@dataclass(frozen=True, eq=False)  # eq=False: the fields are numpy arrays
class _Windows:
    """The eval windows and, per token (window-major), where its attributes come from."""

    tokens: np.ndarray  # int32 [n_windows, window]
    flat: np.ndarray  # int64 token ids, window-major
    docid: np.ndarray  # eval document of each token, -1 for EOS
    is_eos: np.ndarray  # the token has no character (EOS)
    safe: np.ndarray  # the token's char index, 0 for EOS

    def take(self, arr: np.ndarray, fill: int) -> np.ndarray:
        """`arr` at each token's character, `fill` for EOS."""
        return np.where(self.is_eos, fill, arr[self.safe])


@dataclass(frozen=True, eq=False)  # eq=False: the fields are numpy arrays
class _Vocab:
    """Per token id: its decoded string, token class and train-count bucket."""

    strings: np.ndarray
    classes: np.ndarray
    buckets: np.ndarray


@dataclass(frozen=True, eq=False)  # eq=False: the fields are numpy arrays
class _TokenAttrs:
    """Per eval token (window-major): the ground-truth columns of `eval_meta.parquet`."""

    tag: np.ndarray
    lang: np.ndarray
    depth: np.ndarray
    phrase_id: np.ndarray
    fact_id: np.ndarray
    role: np.ndarray
    second: np.ndarray
    held: np.ndarray


def _eval_windows(
    cfg: CorpusConfig,
    tok: Any,
    docs: list[_Document] | None,
    encs: list[Any],
    counts: np.ndarray,
    phrases: list[dict[str, Any]],
    texts: list[str] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Eval windows `[n_windows, window]` and their per-token metadata (window-major rows).

    `docs` gives per-character ground truth; None (real text) tags everything "text".
    """
    eos = tok.token_to_id(EOS)
    plan = _WindowPlan(eos=eos, window=cfg.window, n_windows=cfg.n_eval_tokens // cfg.window)
    doc_text, chars = _char_codes(docs, texts)
    win = _windows(plan, *_token_stream(plan, encs, doc_text))
    vocab = _vocab_tables(tok, counts)
    attrs = _planted_attributes(chars, win) if chars is not None else _text_attributes(win)
    meta = _meta_frame(plan, win, vocab, attrs, _phrase_buckets(phrases))
    return win.tokens, meta


def _piece_codes(
    docs: list[_Document],
) -> tuple[list[list[int]], list[int], list[str], list[str]]:
    """Attribute codes (7 lists) and length of every piece of every document, each
    document's text and the languages met ("none" first, then in order of appearance)."""
    tag_i = {t: i for i, t in enumerate(TAGS)}
    role_i = {t: i for i, t in enumerate(ROLES)}
    langs: list[str] = ["none"]
    lang_i = {"none": 0}
    fields: list[list[int]] = [[] for _ in range(7)]
    lengths: list[int] = []
    doc_text: list[str] = []
    for d, doc in enumerate(docs):
        parts = []
        for text, a in doc.pieces():
            if a.language not in lang_i:
                lang_i[a.language] = len(langs)
                langs.append(a.language)
            for f, v in zip(
                fields,
                (
                    tag_i[a.tag],
                    lang_i[a.language],
                    a.depth,
                    a.phrase_id,
                    a.fact_id,
                    role_i[a.role],
                    d,
                ),
                strict=True,
            ):
                f.append(v)
            lengths.append(len(text))
            parts.append(text)
        doc_text.append("".join(parts))
    return fields, lengths, doc_text, langs


def _char_codes(
    docs: list[_Document] | None, texts: list[str] | None
) -> tuple[list[str], _CharCodes | None]:
    """Each eval document's text and the per-character attribute codes over all docs,
    concatenated (None for real text, `docs` None, whose texts are `texts`)."""
    fields, lengths, doc_text, langs = _piece_codes(docs if docs is not None else [])
    if docs is None:
        return list(texts or []), None
    lengths_a = np.asarray(lengths, dtype=np.int64)
    char = {
        name: np.repeat(np.asarray(f, dtype=np.int64), lengths_a)
        for name, f in zip(
            ("tag", "lang", "depth", "phrase", "fact", "role", "doc"), fields, strict=True
        )
    }
    flags_second = np.repeat(
        np.fromiter((a.second_copy for doc in docs for _, a in doc.pieces()), dtype=bool),
        lengths_a,
    )
    flags_held = np.repeat(
        np.fromiter((a.heldout for doc in docs for _, a in doc.pieces()), dtype=bool), lengths_a
    )
    codes = _CharCodes(langs=langs, codes=char, second_copy=flags_second, heldout=flags_held)
    return doc_text, codes


def _first_nonspace(text: str, offs: np.ndarray) -> np.ndarray:
    """Per token (`offs`: its [start, end) in `text`), the char index of the first
    non-whitespace character from its start, capped at its last character."""
    if len(text):
        nonws = np.fromiter((not c.isspace() for c in text), dtype=bool, count=len(text))
        nxt = np.where(nonws, np.arange(len(text)), len(text))
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]
        first = np.minimum(
            nxt[np.minimum(offs[:, 0], len(text) - 1)], np.maximum(offs[:, 1] - 1, 0)
        )
    else:
        first = np.zeros(0, dtype=np.int64)
    return first


def _token_stream(
    plan: _WindowPlan, encs: list[Any], doc_text: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The eval stream (documents joined by EOS) as `[n_windows, window - 1]` token ids,
    char indices (-1 for EOS) and document indices (-1 for EOS)."""
    stream_ids: list[np.ndarray] = []
    stream_char: list[np.ndarray] = []
    stream_doc: list[np.ndarray] = []
    base = 0
    total = 0
    for d, (enc, text) in enumerate(zip(encs, doc_text, strict=True)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        first = _first_nonspace(text, offs)
        stream_ids += [ids, np.array([plan.eos])]
        stream_char += [base + first, np.array([-1])]
        stream_doc += [np.full(len(ids), d), np.array([-1])]
        base += len(text)
        total += len(ids) + 1
        if total >= plan.need:
            break
    shape = (plan.n_windows, plan.window - 1)
    sid = np.concatenate(stream_ids)[: plan.need].reshape(shape)
    sch = np.concatenate(stream_char)[: plan.need].reshape(shape)
    sdoc = np.concatenate(stream_doc)[: plan.need].reshape(shape)
    return sid, sch, sdoc


def _windows(plan: _WindowPlan, sid: np.ndarray, sch: np.ndarray, sdoc: np.ndarray) -> _Windows:
    """Prefix every stream slice with EOS (char index and document -1) and flatten."""
    n_windows = plan.n_windows
    tokens = np.concatenate([np.full((n_windows, 1), plan.eos), sid], axis=1).astype(np.int32)
    cidx = np.concatenate([np.full((n_windows, 1), -1), sch], axis=1).ravel()
    docid = np.concatenate([np.full((n_windows, 1), -1), sdoc], axis=1).ravel()
    flat = tokens.ravel().astype(np.int64)
    is_eos = cidx < 0
    safe = np.where(is_eos, 0, cidx)
    return _Windows(tokens=tokens, flat=flat, docid=docid, is_eos=is_eos, safe=safe)


def _vocab_tables(tok: Any, counts: np.ndarray) -> _Vocab:
    """Decode, classify and bucket (by train count) every token id of the vocabulary."""
    vocab_size = tok.get_vocab_size()
    strings = np.array(
        [tok.decode([i], skip_special_tokens=False) for i in range(vocab_size)], dtype=object
    )
    special = {tok.token_to_id(EOS)}
    classes = np.array([token_class(s, i in special) for i, s in enumerate(strings)], dtype=object)
    buckets = np.array([freq_bucket(int(c)) for c in counts], dtype=object)
    return _Vocab(strings=strings, classes=classes, buckets=buckets)


def _planted_attributes(chars: _CharCodes, win: _Windows) -> _TokenAttrs:
    """Each token's ground truth: that of its character (see `_first_nonspace`); EOS gets
    tag "special", language "none", no phrase, fact or role."""
    char = chars.codes
    take = win.take
    return _TokenAttrs(
        tag=np.array(TAGS, dtype=object)[take(char["tag"], 0)],
        lang=np.array(chars.langs, dtype=object)[take(char["lang"], 0)],
        depth=take(char["depth"], 0),
        phrase_id=take(char["phrase"], -1),
        fact_id=take(char["fact"], -1),
        role=np.array(ROLES, dtype=object)[take(char["role"], 0)],
        second=np.where(win.is_eos, False, chars.second_copy[win.safe]),
        held=np.where(win.is_eos, False, chars.heldout[win.safe]),
    )


def _text_attributes(win: _Windows) -> _TokenAttrs:
    """Real text's ground truth: every token "text" in language "unknown", EOS "special"."""
    n = len(win.flat)
    return _TokenAttrs(
        tag=np.where(win.is_eos, "special", "text").astype(object),
        lang=np.where(win.is_eos, "none", "unknown").astype(object),
        depth=np.zeros(n, dtype=np.int64),
        phrase_id=np.full(n, -1),
        fact_id=np.full(n, -1),
        role=np.full(n, "", dtype=object),
        second=np.zeros(n, dtype=bool),
        held=np.zeros(n, dtype=bool),
    )


def _phrase_buckets(phrases: list[dict[str, Any]]) -> np.ndarray:
    """Train-count bucket of each phrase, indexed by phrase_id + 1 ("none" if no phrase)."""
    pbucket = {p["id"]: freq_bucket(p["train_count"]) for p in phrases}
    return np.array(
        [pbucket.get(int(i), "none") for i in range(-1, max(pbucket, default=-1) + 1)], dtype=object
    )


def _meta_frame(
    plan: _WindowPlan, win: _Windows, vocab: _Vocab, attrs: _TokenAttrs, pfb: np.ndarray
) -> pd.DataFrame:
    """The `eval_meta.parquet` table: one row per eval token, window-major, text as str."""
    n_windows, W, flat = plan.n_windows, plan.window, win.flat
    meta = pd.DataFrame(
        {
            "window": np.repeat(np.arange(n_windows, dtype=np.int32), W),
            "pos": np.tile(np.arange(W, dtype=np.int32), n_windows),
            "token_id": flat.astype(np.int32),
            "token": vocab.strings[flat],
            "token_class": vocab.classes[flat],
            "tag": attrs.tag,
            "language": attrs.lang,
            "bracket_depth": attrs.depth.astype(np.int16),
            "phrase_id": attrs.phrase_id.astype(np.int32),
            "phrase_freq_bucket": pfb[attrs.phrase_id + 1],
            "freq_bucket": vocab.buckets[flat],
            "seen_before": seen_before(win.tokens).ravel(),
            "second_copy": attrs.second.astype(bool),
            "role": attrs.role,
            "fact_id": attrs.fact_id.astype(np.int32),
            "fact_heldout": attrs.held.astype(bool),
            "doc_id": win.docid.astype(np.int32),
        }
    )
    for col in (
        "token",
        "token_class",
        "tag",
        "language",
        "phrase_freq_bucket",
        "freq_bucket",
        "role",
    ):
        meta[col] = meta[col].astype(str)
    return meta


def seen_before(tokens: np.ndarray) -> np.ndarray:
    """`[n_windows, window]` bool: token id occurred at an earlier position of its window."""
    n, w = tokens.shape
    key = np.arange(n, dtype=np.int64)[:, None] * (int(tokens.max(initial=0)) + 1) + tokens
    flat = key.ravel()
    order = np.argsort(flat, kind="stable")  # stable: positions stay ascending within a key
    s = flat[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    out = np.empty(len(s), dtype=bool)
    out[order] = ~first
    return out.reshape(n, w)


# ----------------------------------------------------------------------------- real text


def _read_text_files(cfg: CorpusConfig) -> list[tuple[str, str]]:
    """(file name, text) of every *.txt in text_dir, validated before any heavy work."""
    from seedscope.core import paths

    root = Path(cfg.text_dir)
    if not root.is_absolute():
        root = paths.project_root() / root
    files = sorted(root.glob("*.txt")) if root.is_dir() else []
    if not files:
        raise SeedscopeError(
            f"no *.txt files in text_dir {str(root)!r}.",
            "put UTF-8 .txt files there or set text_dir / source='synthetic'.",
        )
    out = []
    for f in files:
        out.append((f.name, read_text_file(f)))
    need = (cfg.n_eval_tokens // cfg.window) * (cfg.window - 1)
    n_bytes = sum(len(t.encode("utf-8")) for _, t in out)
    # every token holds at least one byte, and train needs at least as much again
    if n_bytes < 2 * need:
        raise SeedscopeError(
            f"text_dir holds {n_bytes} bytes, too little for {cfg.n_eval_tokens} eval tokens "
            "plus a train split.",
            "add text or lower n_eval_tokens.",
        )
    return out


def check_inputs(cfg: CorpusConfig) -> None:
    """Pre-flight of `build_corpus` (cheap, before any tokenizer is trained): for
    `source: text`, every *.txt in text_dir is non-empty UTF-8 and together large enough
    for the eval split plus a train split, and `tokenizer_dir`, if set, is a folder."""
    if cfg.source != "text":
        return
    _read_text_files(cfg)
    problem = tokenizer_dir_problem(_resolve(cfg.tokenizer_dir)) if cfg.tokenizer_dir else None
    if problem:
        raise SeedscopeError(f"{problem}.", TOKENIZER_DIR_FIX)


def _text_documents(files: list[tuple[str, str]], target_chars: int = 4000) -> list[str]:
    """Split files into documents of whole paragraphs (~target_chars each)."""
    docs = []
    for _, text in files:
        current: list[str] = []
        size = 0
        for par in re.split(r"\n\s*\n", text):
            if not par.strip():
                continue
            current.append(par)
            size += len(par)
            if size >= target_chars:
                docs.append("\n\n".join(current))
                current, size = [], 0
        if current:
            docs.append("\n\n".join(current))
    return docs


def _resolve(path: str) -> Path:
    """A config path; relative paths are taken from the project root."""
    from seedscope.core import paths

    p = Path(path)
    return p if p.is_absolute() else paths.project_root() / p


def _build_text(cfg: CorpusConfig, out: Path) -> dict[str, Any]:
    files = _read_text_files(cfg)
    tok = _load_tokenizer(_resolve(cfg.tokenizer_dir)) if cfg.tokenizer_dir else None
    docs = _text_documents(files)
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(docs))
    docs = [docs[i] for i in order]
    n_windows = cfg.n_eval_tokens // cfg.window
    need = n_windows * (cfg.window - 1)
    too_little = SeedscopeError(
        f"text_dir holds too little text for {need} eval tokens plus a train split.",
        "add text or lower n_eval_tokens.",
    )
    if tok is None:
        # eval = a prefix of the shuffled documents; the tokenizer never sees a generous
        # prefix (<= 4 chars per token), so it is trained on train documents only
        n_guess, chars = 0, 0
        while n_guess < len(docs) and chars < 4 * need:
            chars += len(docs[n_guess])
            n_guess += 1
        if n_guess >= len(docs):
            raise too_little
        tok = _train_tokenizer(docs[n_guess:], cfg.vocab_size)
    eos = tok.token_to_id(EOS)
    encs = tok.encode_batch(docs, add_special_tokens=False)
    n_eval, got = 0, 0
    while n_eval < len(docs) and got < need:
        got += len(encs[n_eval].ids) + 1
        n_eval += 1
    if got < need or n_eval == len(docs):
        raise too_little
    train_ids = [e.ids for e in encs[n_eval:]]
    keep, total = 0, 0
    while keep < len(train_ids) and total < cfg.n_train_tokens:
        total += len(train_ids[keep]) + 1
        keep += 1
    train_tokens = _join_docs(train_ids[:keep], eos).astype(np.uint16)
    counts = np.bincount(train_tokens, minlength=tok.get_vocab_size()).astype(np.int64)
    eval_tokens, meta = _eval_windows(
        cfg, tok, None, encs[:n_eval], counts, [], texts=docs[:n_eval]
    )
    tok_out = out / "tokenizer"
    if cfg.tokenizer_dir:
        _copy_tokenizer(tok, _resolve(cfg.tokenizer_dir), tok_out, cfg.window)
    else:
        _save_tokenizer(tok, tok_out, cfg.window)
    write_npy(out / "train_tokens.npy", train_tokens)
    write_npy(out / "eval_tokens.npy", eval_tokens)
    write_npy(out / "train_token_counts.npy", counts)
    write_parquet(out / "eval_meta.parquet", meta)
    write_json(
        out / "ground_truth.json",
        {
            "source": "text",
            "files": [name for name, _ in files],
            "eos_token": EOS,
            "languages": {},
            "default_language": "",
            "sentence_end": [],
            "capitalised_sentence_start": False,
            "brackets": [],
            "bracket_depth_probs": [],
            "tlds": [],
            "email_domains": [],
            "acronyms": [],
            "names": [],
            "phrases": [],
            "facts": [],
            "config": cfg.to_dict(),
        },
    )
    stats = {
        "source": "text",
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos,
        "window": cfg.window,
        "train": {"n_docs": keep, "n_tokens": int(len(train_tokens))},
        "eval": {"n_docs": n_eval, "n_windows": n_windows},
    }
    write_json(out / "corpus_stats.json", stats)
    return stats


def config_json(cfg: CorpusConfig) -> str:
    """The config as canonical JSON (for hashing / DVC params)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)
