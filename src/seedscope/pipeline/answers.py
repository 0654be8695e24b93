"""The front page's answers: per analysis, its question and the sentences that answer it from
`metrics/details/<stage>.json` (the one place mapping stage -> headline keys -> sentence), and
numbers formatted for people ("0.948 (95% CI 0.947-0.948)", "1,048,576").

A sentence names headline keys in braces: `{key}` shows the value with its CI (and unit),
`{key.value}` the value alone. A sentence whose keys are absent from the stage's metrics is
replaced by a line saying which key is missing (or dropped, when it is `optional`), so a
renamed key shows up on the page instead of breaking the build.

>>> format_number(0.94763), format_number(1048576.0), format_number(-0.000123)
('0.948', '1,048,576', '-1.23×10⁻⁴')
>>> format_headline({"value": 0.9476, "ci_low": 0.9472, "ci_high": 0.948, "unit": ""})
'0.948 (95% CI 0.947-0.948)'
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)(\.value)?\}")
_NO_UNIT = {"", "fraction", "ratio", "r"}


def format_number(x: float | None, digits: int = 3) -> str:
    """A number for people: 3 significant digits, thousands separators, exact counts,
    scientific notation (×10ⁿ) only below 0.001; 'n/a' for a missing or non-finite value."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e15:  # counts (and whole numbers) stay exact
        return f"{int(x):,}"
    if abs(x) < 1e-3:
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa}×10{str(int(exponent)).translate(_SUPERSCRIPT)}"
    magnitude = math.floor(math.log10(abs(x)))
    exponent = magnitude - (digits - 1)
    # half-up, as people round (610.5 -> 611), from the shortest repr of the float
    rounded = Decimal(repr(x)).quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    if exponent >= 0:
        return f"{int(rounded):,}"
    return f"{rounded:,.{-exponent}f}"


def format_headline(entry: dict[str, Any]) -> str:
    """One headline entry as shown on the book's pages: value, unit, 95% CI."""
    text = format_number(entry.get("value"))
    unit = entry.get("unit") or ""
    if unit not in _NO_UNIT and text != "n/a":
        text += f" {unit}"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is not None and high is not None:
        sep = " to " if min(low, high) < 0 else "-"
        text += f" (95% CI {format_number(low)}{sep}{format_number(high)})"
    return text


@cache
def _parts():  # type: ignore[no-untyped-def]
    """The Jinja2 macros of answer_parts.html.j2 (HTML-escaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("seedscope.pipeline", "templates"), autoescape=True
    )
    return env.get_template("answer_parts.html.j2").module


def metric_html(stage: str, key: str, entry: dict[str, Any], value_only: bool = False) -> str:
    """The number as an HTML span tagged `data-metric="stage.key"` (the browser test reads
    every tagged number back and compares it with metrics/)."""
    text = format_number(entry.get("value")) if value_only else format_headline(entry)
    return str(_parts().metric(stage, key, "value" if value_only else "full", text))


@dataclass(frozen=True)
class Sentence:
    """One sentence of an answer. `template` names headline keys in braces; `when` (given the
    stage's headline values by key) decides whether the sentence applies; an `optional`
    sentence whose keys are absent is dropped instead of reported missing."""

    template: str
    when: Callable[[dict[str, float | None]], bool] | None = None
    optional: bool = False

    @property
    def keys(self) -> list[str]:
        return [m.group(1) for m in _PLACEHOLDER.finditer(self.template)]


@dataclass(frozen=True)
class Answer:
    """An analysis stage's question and the sentences that answer it from its metrics (its
    number and title are the stage registry's: one numbering for notebooks, book, README)."""

    stage: str
    question: str
    sentences: tuple[Sentence, ...] = field(default_factory=tuple)
    short: tuple[Sentence, ...] = field(default_factory=tuple)  # the one-line answer on top

    @property
    def number(self) -> str:
        from seedscope.pipeline.registry import STAGES

        return STAGES[self.stage].number

    @property
    def title(self) -> str:
        from seedscope.pipeline.registry import STAGES

        return STAGES[self.stage].title


def _v(values: dict[str, float | None], key: str) -> float:
    value = values.get(key)
    return float("nan") if value is None else float(value)


# The one mapping stage -> headline keys -> sentences. Update keys here when a stage renames
# them; the book's front page and its tests read nothing else.
ANSWERS: tuple[Answer, ...] = (
    Answer(
        "loss_correlation",
        "Do two runs that differ only in their seed find the same tokens hard?",
        (
            Sentence(
                "Per-token log-probs of two runs of the same size correlate with a mean "
                "Pearson r of {pearson_within_sizes} at the final step; pairs of runs of "
                "different sizes: {pearson_across_sizes}."
            ),
            Sentence("Within minus across sizes: {pearson_within_minus_across}.", optional=True),
        ),
        (Sentence("same-size runs' per-token log-probs correlate at r = {pearson_within_sizes}"),),
    ),
    Answer(
        "convergence",
        "Do capabilities that one seed has and another lacks at mid-training close by the end?",
        (
            Sentence(
                "{n_gaps_mid.value} capability gaps between seeds of one size are open at "
                "mid-training (significant after FDR control and not within the equivalence "
                "margin); the fraction of them closed by the final step (shrank, and then "
                "equivalent to zero within the margin) is {fraction_gaps_closed}."
            ),
        ),
        (
            Sentence(
                "of {n_gaps_mid.value} seed gaps open at mid-training, a fraction "
                "{fraction_gaps_closed} closed by the end"
            ),
        ),
    ),
    Answer(
        "loss_pca",
        "Along which directions do the runs' per-token losses vary?",
        (
            Sentence(
                "The first principal component of per-token loss (difficulty shared by every "
                "run) explains a fraction {pc1_variance} of its variance."
            ),
            Sentence(
                "With each size's mean removed, seeds account for a fraction "
                "{seed_variance_share} of the variance, and no component of it passes the "
                "parallel-analysis test against window-permuted runs: no seed structure "
                "beyond noise.",
                when=lambda v: _v(v, "n_seed_components") == 0,
            ),
            Sentence(
                "With each size's mean removed, seeds account for a fraction "
                "{seed_variance_share} of the variance, and {n_seed_components.value} "
                "component(s) of it pass the parallel-analysis test against permuted runs.",
                when=lambda v: not _v(v, "n_seed_components") == 0,
            ),
        ),
        (
            Sentence(
                "PC1 (shared difficulty) explains {pc1_variance} of per-token loss variance; "
                "{n_seed_components.value} seed component(s) pass the noise test"
            ),
        ),
    ),
    Answer(
        "behaviours",
        "Do seeds of one size learn the same behaviours, equally well, at the same time?",
        (
            Sentence(
                "At the final step the chance-normalised behaviour score varies across seeds "
                "of one size with a standard deviation of {final_score_seed_sd} (mean over "
                "behaviours and sizes)."
            ),
        ),
        (Sentence("final behaviour scores vary across seeds with sd {final_score_seed_sd}"),),
    ),
    Answer(
        "trajectories",
        "Are tokens on which seeds disagree learned in a sudden (S-shaped) way?",
        (
            Sentence(
                "A fraction {s_fraction_divergent.value} of seed-divergent tokens have an "
                "S-shaped loss curve against {s_fraction_random.value} of random tokens: a "
                "difference of {s_fraction_difference}."
            ),
            Sentence(
                "The shape classifier scores {classifier_accuracy.value} accuracy on synthetic "
                "curves at the real noise level.",
                optional=True,
            ),
        ),
        (
            Sentence(
                "S-shaped fraction, seed-divergent minus random tokens: {s_fraction_difference}"
            ),
        ),
    ),
    Answer(
        "induction",
        "Do induction heads form in every seed, and at the same step?",
        (
            Sentence(
                "No run formed an induction head by the final step "
                "(fraction formed {fraction_formed.value}).",
                when=lambda v: _v(v, "fraction_formed") == 0,
            ),
            Sentence(
                "A fraction {fraction_formed.value} of runs formed an induction head.",
                when=lambda v: not _v(v, "fraction_formed") == 0,
            ),
            Sentence(
                "Mean phase-change step, small models: {phase_change_step_small}.",
                optional=True,
            ),
            Sentence(
                "Mean phase-change step, medium models: {phase_change_step_medium}.",
                optional=True,
            ),
        ),
        (
            Sentence(
                "no run formed an induction head (fraction {fraction_formed.value})",
                when=lambda v: _v(v, "fraction_formed") == 0,
            ),
            Sentence(
                "a fraction {fraction_formed.value} of runs formed an induction head",
                when=lambda v: not _v(v, "fraction_formed") == 0,
            ),
        ),
    ),
)


def answer_html(answer: Answer, record: dict[str, Any] | None, short: bool = False) -> str:
    """The answer's paragraph (HTML, numbers tagged), or its one-line form (`short`), from a
    stage's metrics/details record; says plainly what is missing when the record or a key is
    absent."""
    if record is None:
        part = _parts().missing_stage_short if short else _parts().missing_stage
        return str(part(answer.stage))
    heads = record.get("headline") or {}
    values = {key: entry.get("value") for key, entry in heads.items()}
    parts = []
    for sentence in answer.short if short else answer.sentences:
        missing = [key for key in sentence.keys if key not in heads]
        if missing:
            if not sentence.optional:
                parts.append(str(_parts().missing_keys(answer.stage, missing)))
            continue
        if sentence.when is not None and not sentence.when(values):
            continue

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            return metric_html(answer.stage, key, heads[key], value_only=bool(match.group(2)))

        parts.append(_PLACEHOLDER.sub(fill, html.escape(sentence.template, quote=False)))
    return " ".join(parts)
