"""Typed, validated parameters: params.yaml sections -> frozen dataclasses, or one clear error.

Each module owns a frozen dataclass of its parameters (`CorpusConfig`, `TrainConfig`, ...);
`from_section` checks a params section against it before any heavy work: unknown keys
(with the closest valid key), wrong types and bad values are rejected with a message
naming `section.key` and the fix. The resolved config is saved with every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from seedscope.core.errors import SeedscopeError, closest
from seedscope.suites.registry import Suite, get_suite

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_type(value: Any, tp: Any) -> bool:
    """Is `value` acceptable for the annotation `tp` (simple types, unions, list/dict)?"""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple or tp is tuple:  # YAML has no tuples: a list stands for one
        return isinstance(value, list | tuple)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_check_type(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def from_section(cls: type[T], section: dict[str, Any] | None, name: str) -> T:
    """Build `cls` from a params section, rejecting unknown keys and wrong types."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise SeedscopeError(
            f"Params section {name!r} must be a mapping, got {type(section).__name__}.",
            f"write `{name}:` followed by indented `key: value` lines in params.yaml.",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in section.items():
        if key not in fields:
            raise SeedscopeError(
                f"Unknown params key {name}.{key}.{closest(str(key), list(fields))}",
                f"valid keys of {name!r}: {', '.join(fields)}.",
            )
        if not _check_type(value, hints[key]):
            raise SeedscopeError(
                f"Params key {name}.{key} must be {_type_name(hints[key])}, got {value!r}.",
                f"give {name}.{key} a value of type {_type_name(hints[key])}.",
            )
        if hints[key] is float and isinstance(value, int):
            section = {**section, key: float(value)}
    try:
        return cls(**section)
    except SeedscopeError as exc:
        if name in str(exc):
            raise
        raise SeedscopeError(f"In params section {name!r}: {exc}") from None


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def params_hash(*configs: Any) -> str:
    """A short stable hash of resolved configs (provenance of every output)."""
    blob = json.dumps([as_dict(c) for c in configs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SuiteConfig:
    """Which suite and runs a study uses, and its mid/final steps (`mid`, `final` or a step)."""

    name: str = "mini"
    runs: list[str] | str = "all"
    mid_step: int | str = "mid"
    final_step: int | str = "final"

    def __post_init__(self) -> None:
        if isinstance(self.runs, str) and self.runs != "all":
            raise SeedscopeError(
                f"suite.runs must be 'all' or a list of run names, got {self.runs!r}.",
                "write `runs: all` or `runs: [name, name]`.",
            )
        for key in ("mid_step", "final_step"):
            value = getattr(self, key)
            if isinstance(value, str) and value not in ("mid", "final"):
                raise SeedscopeError(
                    f"suite.{key} must be 'mid', 'final' or a step number, got {value!r}.",
                    "use a step on the suite's schedule (see `seedscope checkpoints SUITE`).",
                )

    def resolve(self) -> ResolvedSuite:
        """Look up the suite and runs, resolve the steps; all errors raised here."""
        suite = get_suite(self.name).select(self.runs)
        if isinstance(self.runs, list) and len(self.runs) < 2:
            raise SeedscopeError(
                "suite.runs names fewer than 2 runs: seed comparisons need at least two.",
                "list two or more runs, or use `runs: all`.",
            )
        final = suite.resolve_step(self.final_step)
        mid = suite.resolve_step(self.mid_step)
        if mid >= final:
            raise SeedscopeError(
                f"suite.mid_step ({mid}) is not before suite.final_step ({final}).",
                f"choose a mid step below {final}, e.g. {suite.mid_step}.",
            )
        return ResolvedSuite(suite=suite, mid_step=mid, final_step=final)


@dataclass(frozen=True)
class ResolvedSuite:
    suite: Suite
    mid_step: int
    final_step: int

    @property
    def run_names(self) -> list[str]:
        return [r.name for r in self.suite.runs]

    def manifest(self) -> dict[str, Any]:
        """The resolved suite as written to results/manifest.json."""
        s = self.suite
        return {
            "suite": s.name,
            "description": s.description,
            "architecture": s.architecture,
            "tokenizer": s.tokenizer,
            "local_cache": s.local_cache,
            "runs": [
                {
                    "name": r.name,
                    "repo_id": r.repo_id,
                    "seed": r.seed,
                    "size": r.size,
                    "varies": r.varies,
                }
                for r in s.runs
            ],
            "sizes": s.sizes(),
            "mid_step": self.mid_step,
            "final_step": self.final_step,
            "steps": list(s.steps),
            "revisions": {str(step): s.revision(step) for step in s.steps},
        }
