"""One exception for every mistake a user can make: it names the problem and the fix."""

from __future__ import annotations


class SeedscopeError(ValueError):
    """A user-facing error: the message names the problem and how to fix it.

    The command line prints it as one line and exits with status 2; notebooks let it
    propagate so the failing stage stops before any heavy work.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' Did you mean X?' for the closest of `choices`, or '' if none is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what is wrong and where (line:column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def connect_problem(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port cannot be opened within `timeout` s, or None."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {type(exc).__name__}: {exc}"
