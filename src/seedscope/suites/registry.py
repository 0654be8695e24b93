"""The suite registry: a suite is data (a YAML file), never a code branch.

A suite maps run names to hub repos (with seed and size) and carries its checkpoint
schedule and the revision format (`checkpoint-{step}` for CRFM, `step{step}` for Pythia).
Registry folders: the package's `suites/`, then every folder in `$SEEDSCOPE_SUITES`
(os.pathsep-separated), so a user adds a suite by dropping in one YAML file.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from seedscope.core.errors import SeedscopeError, closest, yaml_problem

PACKAGE_SUITES = Path(__file__).parent


@dataclass(frozen=True)
class Run:
    """One training run: a hub repo whose revisions are its checkpoints."""

    name: str
    repo_id: str
    seed: int
    size: str
    varies: str = "both"  # what the seed changed: "both" (init + data order), "init", "data"

    @property
    def label(self) -> str:
        """Human label used in every figure: name and seed."""
        return f"{self.name} (seed {self.seed})"


@dataclass(frozen=True)
class Suite:
    """A set of runs sharing a tokenizer, an architecture and a checkpoint schedule."""

    name: str
    description: str
    architecture: str
    revision_format: str
    tokenizer: str
    steps: tuple[int, ...]
    runs: tuple[Run, ...]
    local_cache: str | None = None  # hub cache under results/ (mini-suite), else the user's
    source: str = field(default="", compare=False)

    def run(self, name_or_repo: str) -> Run:
        """Find a run by short name (`alias`) or repo id; suggest the closest on a typo."""
        for run in self.runs:
            if name_or_repo in (run.name, run.repo_id):
                return run
        names = [r.name for r in self.runs]
        raise SeedscopeError(
            f"Unknown run {name_or_repo!r} in suite {self.name!r}.{closest(name_or_repo, names)}",
            f"use one of: {', '.join(names)} (or their repo ids).",
        )

    def revision(self, step: int) -> str:
        """The hub revision (branch) holding checkpoint `step`; the step must be on the schedule."""
        self.check_step(step)
        return self.revision_format.format(step=step)

    def check_step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            raise SeedscopeError(
                f"Step {step!r} is not an integer.", "give a step number from the schedule."
            )
        if step in self.steps:
            return step
        i = bisect.bisect_left(self.steps, step)
        near = sorted({self.steps[j] for j in (i - 1, i) if 0 <= j < len(self.steps)})
        raise SeedscopeError(
            f"Step {step} is not on the checkpoint schedule of suite {self.name!r}.",
            f"use a step on the schedule, e.g. the nearest: {', '.join(map(str, near))} "
            f"(see `seedscope checkpoints {self.name}`).",
        )

    @property
    def final_step(self) -> int:
        return self.steps[-1]

    @property
    def mid_step(self) -> int:
        """The schedule step nearest half of the final step (the default mid-training step)."""
        half = self.final_step / 2
        return min(self.steps, key=lambda s: (abs(s - half), s))

    def resolve_step(self, step: int | str) -> int:
        """`final`, `mid` or an integer on the schedule -> the integer step."""
        if step == "final":
            return self.final_step
        if step == "mid":
            return self.mid_step
        if isinstance(step, str) and step.isdigit():
            step = int(step)
        return self.check_step(step)  # type: ignore[arg-type]

    def sizes(self) -> list[str]:
        """Sizes in order of first appearance."""
        return list(dict.fromkeys(r.size for r in self.runs))

    def select(self, names: list[str] | str) -> Suite:
        """A copy with only the named runs (`all` keeps every run)."""
        if names == "all":
            return self
        if isinstance(names, str):
            names = [names]
        runs = tuple(self.run(n) for n in names)
        return Suite(**{**self.__dict__, "runs": runs})


def schedule_steps(spec: dict) -> tuple[int, ...]:
    """Expand a schedule spec (`explicit` steps and `segments` of start/stop/every) to steps.

    >>> schedule_steps({"segments": [{"start": 0, "stop": 20, "every": 10}]})
    (0, 10, 20)
    """
    steps = set(int(s) for s in spec.get("explicit", []))
    for seg in spec.get("segments", []):
        start, stop, every = int(seg["start"]), int(seg["stop"]), int(seg["every"])
        if every <= 0 or stop < start:
            raise SeedscopeError(
                f"Bad schedule segment {seg}.", "each segment needs start <= stop and every > 0."
            )
        steps.update(range(start, stop + 1, every))
    if not steps:
        raise SeedscopeError("A suite schedule has no steps.", "add `segments` or `explicit`.")
    return tuple(sorted(steps))


def registry_dirs() -> list[Path]:
    extra = os.environ.get("SEEDSCOPE_SUITES", "")
    return [PACKAGE_SUITES] + [Path(p) for p in extra.split(os.pathsep) if p]


def _read_specs() -> dict[str, tuple[dict, Path]]:
    specs: dict[str, tuple[dict, Path]] = {}
    for folder in registry_dirs():
        for path in sorted(Path(folder).glob("*.yaml")):
            try:
                spec = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise SeedscopeError(
                    f"Suite file {path} is not valid YAML ({yaml_problem(exc)}).",
                    "fix or remove it.",
                ) from None
            if not isinstance(spec, dict) or "name" not in spec:
                raise SeedscopeError(f"Suite file {path} has no `name`.", "add `name: <suite>`.")
            specs[spec["name"]] = (spec, path)
    return specs


def _build(name: str, specs: dict[str, tuple[dict, Path]]) -> Suite:
    spec, path = specs[name]
    if "include" in spec:
        parts = [_build(n, specs) for n in spec["include"]]
        first = parts[0]
        for other in parts[1:]:
            if (other.steps, other.tokenizer, other.revision_format) != (
                first.steps,
                first.tokenizer,
                first.revision_format,
            ):
                raise SeedscopeError(
                    f"Suite {name!r} includes suites with different schedules or tokenizers.",
                    "include only suites that share both.",
                )
        runs = tuple(r for p in parts for r in p.runs)
        return Suite(
            name=name,
            description=spec.get("description", ""),
            architecture=first.architecture,
            revision_format=first.revision_format,
            tokenizer=first.tokenizer,
            steps=first.steps,
            runs=runs,
            local_cache=first.local_cache,
            source=str(path),
        )
    required = ["architecture", "revision_format", "tokenizer", "schedule", "runs"]
    missing = [k for k in required if k not in spec]
    if missing:
        raise SeedscopeError(f"Suite file {path} lacks {', '.join(missing)}.", "add them.")
    runs = tuple(
        Run(
            name=str(r["name"]),
            repo_id=str(r["repo_id"]),
            seed=int(r["seed"]),
            size=str(r["size"]),
            varies=str(r.get("varies", "both")),
        )
        for r in spec["runs"]
    )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SeedscopeError(f"Suite file {path} repeats a run name.", "make run names unique.")
    return Suite(
        name=name,
        description=spec.get("description", ""),
        architecture=spec["architecture"],
        revision_format=spec["revision_format"],
        tokenizer=spec["tokenizer"],
        steps=schedule_steps(spec["schedule"]),
        runs=runs,
        local_cache=spec.get("local_cache"),
        source=str(path),
    )


@cache
def _registry(dirs: tuple[str, ...]) -> dict[str, Suite]:
    specs = _read_specs()
    return {name: _build(name, specs) for name in sorted(specs)}


def registry() -> dict[str, Suite]:
    """All registered suites by name."""
    return _registry(tuple(map(str, registry_dirs())))


def get_suite(name: str) -> Suite:
    """Look up a suite by name; suggest the closest on a typo."""
    suites = registry()
    if name not in suites:
        raise SeedscopeError(
            f"Unknown suite {name!r}.{closest(name, list(suites))}",
            f"use one of: {', '.join(suites)} (see `seedscope suites`), "
            "or add a YAML file to $SEEDSCOPE_SUITES.",
        )
    return suites[name]
