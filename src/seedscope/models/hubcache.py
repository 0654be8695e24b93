"""Write files into a Hugging Face hub cache, in the exact layout the hub client writes.

    <cache>/models--<org>--<name>/refs/<revision>          -> text: the commit hash
    <cache>/models--<org>--<name>/blobs/<sha256>             the file's bytes
    <cache>/models--<org>--<name>/snapshots/<commit>/<file>  -> ../../blobs/<sha256>

The mini-suite is stored this way so that it is read back through the same public API
(`snapshot_download(..., local_files_only=True)`, `from_pretrained(repo_id, revision=...)`)
as the real hub suites; tests use it to fabricate caches of CRFM and Pythia checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from seedscope.core.io import atomic_path


def repo_slug(repo_id: str) -> str:
    """A repo id as one path component, the hub cache's way: `org/name` -> `org--name`."""
    return repo_id.replace("/", "--")


def repo_folder(cache_dir: str | os.PathLike[str], repo_id: str) -> Path:
    """The cache folder of a model repo: `models--org--name`."""
    return Path(cache_dir) / ("models--" + repo_slug(repo_id))


def commit_hash(revision: str, file_hashes: Mapping[str, str]) -> str:
    """A deterministic 40-hex 'commit' for a revision: same files => same commit."""
    digest = hashlib.sha1(revision.encode())
    for name in sorted(file_hashes):
        digest.update(f"\0{name}\0{file_hashes[name]}".encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_snapshot(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    revision: str,
    files: Mapping[str, str | os.PathLike[str] | bytes],
    symlinks: bool = True,
) -> str:
    """Store `files` (name -> source path or bytes) as `revision` of `repo_id`; return the commit.

    Blobs are written atomically before the snapshot and the ref; the ref is written last,
    so a reader that resolves the ref always finds a complete snapshot. With
    `symlinks=False` the snapshot holds plain copies (as the hub client does where symlinks
    are unavailable), which tools that copy trees (DVC) handle best.
    """
    folder = repo_folder(cache_dir, repo_id)
    staged: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    blobs = folder / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for name, source in sorted(files.items()):
        if isinstance(source, bytes):
            sha = hashlib.sha256(source).hexdigest()
            if not (blobs / sha).exists():
                with atomic_path(blobs / sha) as tmp:
                    tmp.write_bytes(source)
        else:
            sha = _sha256(Path(source))
            if not (blobs / sha).exists():
                with atomic_path(blobs / sha) as tmp:
                    shutil.copyfile(source, tmp)
        hashes[name] = sha
        staged[name] = blobs / sha
    commit = commit_hash(revision, hashes)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, blob in staged.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if symlinks:
            target.symlink_to(os.path.relpath(blob, target.parent))
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(blob, tmp)
    if not symlinks:
        for blob in set(staged.values()):
            blob.unlink(missing_ok=True)
    with atomic_path(folder / "refs" / revision) as tmp:
        tmp.write_text(commit)
    return commit


def cached_revisions(cache_dir: str | os.PathLike[str], repo_id: str) -> dict[str, str]:
    """Revision -> commit for every ref of `repo_id` present in the cache."""
    refs = repo_folder(cache_dir, repo_id) / "refs"
    if not refs.is_dir():
        return {}
    return {
        p.relative_to(refs).as_posix(): p.read_text().strip()
        for p in sorted(refs.rglob("*"))
        if p.is_file() and not p.name.startswith(".tmp-")
    }
