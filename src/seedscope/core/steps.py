"""Checkpoint steps by name: `first`, `mid`, `final`, `all`, `auto` -> schedule integers.

Every stage that takes `steps` resolves them here, against the resolved suite (whose `mid`
and `final` may be set in params, not only by the schedule), so a name means the same
checkpoint in every stage.
"""

from __future__ import annotations

from typing import Any

from seedscope.core.config import ResolvedSuite


def named_steps(resolved: ResolvedSuite) -> dict[str, int]:
    """`first`, `mid` and `final` of the resolved suite (its params may move `mid`/`final`)."""
    schedule = resolved.suite.steps
    return {"first": schedule[0], "mid": resolved.mid_step, "final": resolved.final_step}


def name_to_step(resolved: ResolvedSuite, value: Any) -> Any:
    """A named step -> its integer; anything else (`all`, an integer) unchanged."""
    return named_steps(resolved).get(value, value) if isinstance(value, str) else value


AUTO_STEPS = 24  # checkpoints `steps: auto` picks from a suite's schedule


def auto_steps(schedule: Any, final: int, mid: int, n: int = AUTO_STEPS) -> list[int]:
    """A spread of `n` steps of `schedule` up to `final`: the first, `mid` and `final`, and
    the rest as near as the schedule allows to steps evenly spaced on the log-step axis
    (where learning curves change): the densest such spread of at most `n` steps. The whole
    schedule when it holds `n` steps or fewer.

    >>> auto_steps(range(0, 1001, 10), final=1000, mid=500, n=6)
    [0, 10, 50, 220, 500, 1000]
    """
    import numpy as np

    pool = sorted(int(s) for s in schedule if int(s) <= final)
    if len(pool) <= n:
        return pool
    fixed = {pool[0], mid, final}
    positive = np.asarray([s for s in pool if s > 0], dtype=float)
    best = sorted(fixed)
    for k in range(2, 4 * len(pool)):
        targets = np.log(np.geomspace(positive[0], final, k))
        near = np.abs(np.log(positive)[:, None] - targets[None, :]).argmin(0)
        spread = fixed | {int(positive[i]) for i in near}
        if len(spread) > n:
            break
        best = sorted(spread)
    return best


def resolve_steps(resolved: ResolvedSuite, steps: Any) -> list[int]:
    """A stage's `steps` against the suite's own schedule -> sorted schedule steps.

    'all' (every checkpoint), 'auto' (a spread of `AUTO_STEPS` of them, see `auto_steps`),
    or a list mixing 'first', 'mid', 'final', 'auto' and schedule integers. Steps past
    the resolved final step are never picked by 'all'/'auto'."""
    schedule = resolved.suite.steps
    if steps == "all":
        return [s for s in schedule if s <= resolved.final_step]
    values = steps if isinstance(steps, list | tuple) else [steps]
    named = named_steps(resolved)
    out: set[int] = set()
    for value in values:
        if value == "auto":
            out.update(auto_steps(schedule, resolved.final_step, resolved.mid_step))
        elif value == "all":
            out.update(s for s in schedule if s <= resolved.final_step)
        elif isinstance(value, str) and value in named:
            out.add(named[value])
        elif isinstance(value, str) and value.isdigit():
            out.add(resolved.suite.check_step(int(value)))
        else:
            out.add(resolved.suite.check_step(value))
    return sorted(out)
