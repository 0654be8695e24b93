"""Atomic writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `path` only on success.

    A kill at any moment leaves either the old file or the new one, plus at most a
    `.tmp-*` file that no reader looks at.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".tmp-{target.name}.", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give a normal file mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as sorted, indented JSON, atomically (stable bytes for DVC hashes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save one array as .npy, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def folder_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The plain files of `folder` (sorted; none if it is missing), without `.tmp-*`
    leftovers of an interrupted atomic write: what a digest of the folder should read."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".tmp-"))


def write_parquet(path: str | os.PathLike[str], frame: Any) -> None:
    """Save a pandas DataFrame as parquet, atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_text_file(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's contents; a missing, empty or non-UTF-8 file is a user error
    (SeedscopeError naming the file and the fix)."""
    from seedscope.core.errors import SeedscopeError

    path = Path(path)
    if not path.is_file():
        raise SeedscopeError(f"Text file '{path}' does not exist.", "give the path of a text file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SeedscopeError(
            f"Text file '{path}' is not UTF-8 ({exc.reason} at byte {exc.start}).",
            "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove it.",
        ) from None
    if not text.strip():
        raise SeedscopeError(f"Text file '{path}' is empty.", "fill it or remove it.")
    return text
