"""(suite, run, step) -> revision -> files -> (model, tokenizer), through the public hub API.

One loading path for every suite: hub suites (CRFM, Pythia) are fetched with
`huggingface_hub.snapshot_download` (weights, config and tokenizer only; resumable;
`HF_HUB_OFFLINE`, `HF_HOME` and `HF_HUB_CACHE` honoured) and the mini-suite is a hub cache
under `results/` read with `local_files_only=True`. Models load with `transformers`
`from_pretrained(repo_id, revision=...)`, safetensors where present, `pytorch_model.bin`
otherwise. Broken inputs (a missing checkpoint, a truncated weights file, a config that is
not JSON) raise `SeedscopeError` naming the file, before anything is evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from seedscope.core.errors import SeedscopeError, connect_problem
from seedscope.core.paths import results_dir
from seedscope.models.hubcache import repo_folder
from seedscope.suites.registry import Run, Suite

# What a unit of the study needs from a checkpoint repo: never optimizer states or
# training args (CRFM snapshots hold several GB of those).
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*.bin",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The same selection, as the few globs a user types (`hf download ... --include`).
DOWNLOAD_GLOBS = ("*.json", "*.txt", "*.safetensors", "pytorch_model*.bin")


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` asks for no network (read at call time, not import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir_for(suite: Suite, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The hub cache to use: an explicit one, the suite's local cache (mini-suite), or None
    (huggingface_hub's default, which honours HF_HOME / HF_HUB_CACHE)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if suite.local_cache:
        return results_dir() / suite.local_cache
    return None


def _resolve(suite: Suite, run: Run | str, step: int) -> tuple[Run, str]:
    run_obj = suite.run(run) if isinstance(run, str) else run
    return run_obj, suite.revision(step)


def fetch_checkpoint(
    suite: Suite,
    run: Run | str,
    step: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Make sure the checkpoint's files are in the cache (downloading if allowed); return the
    snapshot folder. Resumable: huggingface_hub continues partial downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    run_obj, revision = _resolve(suite, run, step)
    cache = cache_dir_for(suite, cache_dir)
    local_only = hub_offline() or suite.local_cache is not None
    try:
        folder = snapshot_download(
            run_obj.repo_id,
            revision=revision,
            cache_dir=cache,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=local_only,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        where = str(cache) if cache else "the default hub cache (HF_HUB_CACHE / HF_HOME)"
        if suite.local_cache is not None:
            fix = (
                f"build it with `dvc repro train` (suite {suite.name!r}), or check that the "
                f"step is one the trainer saved."
            )
        else:
            fix = (
                f"connect to the hub and run `{download_command(run_obj.repo_id, revision)}`, "
                "or point HF_HUB_CACHE at a cache that holds it."
            )
        raise SeedscopeError(
            f"Checkpoint {run_obj.repo_id} revision {revision!r} is neither in {where} nor "
            f"reachable ({type(exc).__name__}).",
            fix,
        ) from None
    return Path(folder)


def download_command(repo_id: str, revision: str) -> str:
    """The shell command that puts one checkpoint in the hub cache (huggingface_hub's `hf`
    CLI; it replaced `huggingface-cli` in 1.x), limited to the files seedscope reads."""
    include = " ".join(f"--include '{p}'" for p in DOWNLOAD_GLOBS)
    return f"hf download {repo_id} --revision {revision} {include}"


TRAINER_STATE = "trainer_state.json"


def fetch_trainer_state(
    suite: Suite,
    run: Run | str,
    step: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any] | None:
    """The `trainer_state.json` of a checkpoint (Hugging Face Trainer's; CRFM snapshots hold
    one whose `log_history` is the run's training loss up to that step), fetched alone
    (a few hundred kB, never the weights); None when the repo has none (Pythia) or it is
    neither cached nor reachable."""
    from huggingface_hub import hf_hub_download

    run_obj, revision = _resolve(suite, run, step)
    cache = cache_dir_for(suite, cache_dir)
    try:
        path = hf_hub_download(
            run_obj.repo_id,
            TRAINER_STATE,
            revision=revision,
            cache_dir=cache,
            local_files_only=hub_offline() or suite.local_cache is not None,
        )
        return json.loads(Path(path).read_text())
    except Exception:  # absent, offline and uncached, or not JSON: no log for this run
        return None


def loss_history(state: dict[str, Any] | None) -> list[dict[str, float]]:
    """(step, loss) rows of a trainer state's `log_history` (the entries that log a training
    loss; evaluation entries carry `eval_loss` instead), sorted by step.

    >>> loss_history({"log_history": [{"step": 20, "loss": 3.5}, {"step": 10, "loss": 4.0},
    ...                               {"step": 20, "eval_loss": 3.9}]})
    [{'step': 10, 'loss': 4.0}, {'step': 20, 'loss': 3.5}]
    """
    rows = {}
    for entry in (state or {}).get("log_history") or []:
        if isinstance(entry, dict) and "loss" in entry and "step" in entry:
            try:
                rows[int(entry["step"])] = float(entry["loss"])
            except (TypeError, ValueError):
                continue
    return [{"step": s, "loss": rows[s]} for s in sorted(rows)]


def validate_snapshot(folder: Path) -> dict[str, Any]:
    """Check config.json parses and the weights file is readable; return the config dict."""
    config_path = folder / "config.json"
    if not config_path.exists():
        raise SeedscopeError(f"{config_path} is missing.", "re-fetch the checkpoint.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SeedscopeError(
            f"{config_path} is not valid JSON ({exc}).",
            "delete the snapshot folder and fetch the checkpoint again.",
        ) from None
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    sharded = sorted(folder.glob("model-*.safetensors")) + sorted(
        folder.glob("pytorch_model-*.bin")
    )
    if not weights and not sharded:
        raise SeedscopeError(
            f"No weights file (model.safetensors or pytorch_model.bin) in {folder}.",
            "re-fetch the checkpoint.",
        )
    for path in weights or sharded:
        _check_weights(path)
    return config


def _check_weights(path: Path) -> None:
    """Open the weights file far enough to detect truncation, without loading tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())
                if names:
                    handle.get_slice(names[-1])
            expected = _safetensors_size(path)
            if expected is not None and path.stat().st_size < expected:
                raise ValueError(f"{path.stat().st_size} bytes, header says {expected}")
        else:
            import zipfile

            if not zipfile.is_zipfile(path):
                raise ValueError("not a zip archive")
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} is corrupt")
    except SeedscopeError:
        raise
    except Exception as exc:  # any parse failure of a weights file means the same thing
        raise SeedscopeError(
            f"Weights file {path} is corrupt or truncated ({exc}).",
            "delete it (and its snapshot folder) and fetch the checkpoint again.",
        ) from None


def _safetensors_size(path: Path) -> int | None:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its header")
        n = int.from_bytes(head, "little")
        header = json.loads(handle.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def load_checkpoint(
    suite: Suite,
    run: Run | str,
    step: int,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    attn_implementation: str | None = None,
    with_tokenizer: bool = True,
) -> tuple[Any, Any]:
    """Fetch (if needed), validate and load one checkpoint: `(model in eval mode, tokenizer)`.

    Loads through `from_pretrained(repo_id, revision=...)` so the hub's own resolution of
    refs -> commits -> snapshots is what is tested. Config flags such as CRFM's
    `scale_attn_by_inverse_layer_idx` and `reorder_and_upcast_attn` are honoured by
    transformers' GPT-2. Pass `attn_implementation="eager"` to read attention patterns.
    """
    from transformers import AutoModelForCausalLM

    run_obj, revision = _resolve(suite, run, step)
    folder = fetch_checkpoint(suite, run_obj, step, cache_dir)
    config = validate_snapshot(folder)
    cache = cache_dir_for(suite, cache_dir)
    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache, "local_files_only": True}
    where = f"{run_obj.repo_id}@{revision}"
    tokenizer = load_tokenizer(run_obj.repo_id, **kwargs) if with_tokenizer else None
    declared = config.get("vocab_size")
    if tokenizer is not None and isinstance(declared, int):
        check_vocab(tokenizer, declared, where)  # before the (heavy) model load
    model_kwargs = dict(kwargs)
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(run_obj.repo_id, **model_kwargs)
    except Exception as exc:  # transformers raises many types here; name the checkpoint
        raise SeedscopeError(
            f"Could not load {run_obj.repo_id} revision {revision!r} from {folder} "
            f"({type(exc).__name__}: {exc}).",
            "delete the snapshot folder and fetch the checkpoint again.",
        ) from None
    model.eval().to(device)
    if tokenizer is not None and not isinstance(declared, int):
        check_vocab(tokenizer, model.config.vocab_size, where)
    return model, tokenizer


def load_tokenizer(repo_id: str, **kwargs: Any) -> Any:
    """A run's tokenizer from its snapshot (vocab.json + merges.txt, or tokenizer.json)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(repo_id, **kwargs)
    except Exception as exc:
        raise SeedscopeError(
            f"Could not load the tokenizer of {repo_id} ({type(exc).__name__}: {exc}).",
            "make sure the snapshot holds vocab.json + merges.txt or tokenizer.json.",
        ) from None


def check_vocab(tokenizer: Any, vocab_size: int, where: str) -> None:
    """A tokenizer whose ids do not fit the model's embedding is a mismatch, not a detail."""
    n = len(tokenizer)
    if n > vocab_size:
        raise SeedscopeError(
            f"The tokenizer of {where} has {n} tokens but the model's vocabulary has "
            f"{vocab_size}: they do not belong together.",
            "use the tokenizer saved with this checkpoint (or a suite whose runs share it).",
        )


def checkpoint_bytes(folder: Path) -> int:
    """Bytes a snapshot occupies (following its symlinks into blobs/)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def evict_checkpoint(
    suite: Suite,
    run: Run | str,
    step: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Delete one revision of a hub suite from the cache; return the bytes freed.

    Never touches the mini-suite's cache (it is a pipeline output, not a download cache).
    """
    if suite.local_cache is not None:
        return 0
    from huggingface_hub import scan_cache_dir

    run_obj, revision = _resolve(suite, run, step)
    cache = cache_dir_for(suite, cache_dir)
    info = scan_cache_dir(cache)
    hashes = [
        rev.commit_hash
        for repo in info.repos
        if repo.repo_id == run_obj.repo_id
        for rev in repo.revisions
        if revision in rev.refs
    ]
    if not hashes:
        return 0
    strategy = info.delete_revisions(*hashes)
    freed = int(strategy.expected_freed_size)
    strategy.execute()
    return freed


def cached_steps(suite: Suite, run: Run | str, cache_dir: str | os.PathLike[str] | None = None):
    """Schedule steps of `run` whose revision is present in the cache (sorted)."""
    from seedscope.models.hubcache import cached_revisions

    run_obj = suite.run(run) if isinstance(run, str) else run
    cache = cache_dir_for(suite, cache_dir)
    if cache is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(HF_HUB_CACHE)
    refs = cached_revisions(cache, run_obj.repo_id)
    return [s for s in suite.steps if suite.revision_format.format(step=s) in refs]


def remove_repo(cache_dir: str | os.PathLike[str], repo_id: str) -> None:
    """Delete a whole repo from a cache folder (used to rebuild the mini-suite)."""
    shutil.rmtree(repo_folder(cache_dir, repo_id), ignore_errors=True)


# ----------------------------------------------------------------------------- pre-flight


def default_hub_cache() -> Path:
    """huggingface_hub's default cache folder (HF_HUB_CACHE / HF_HOME, read at import)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def snapshot_folder(cache_dir: str | os.PathLike[str], repo_id: str, revision: str) -> Path:
    """The snapshot folder a cached `revision` resolves to (refs -> commit -> snapshot),
    without asking the hub."""
    folder = repo_folder(cache_dir, repo_id)
    commit = (folder / "refs" / revision).read_text().strip()
    return folder / "snapshots" / commit


def config_limits(folder: Path) -> tuple[int | None, int | None]:
    """(vocab size, context length) declared by a snapshot's config.json (None if unknown)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    vocab = config.get("vocab_size")
    n_ctx = next(
        (config[k] for k in ("n_positions", "max_position_embeddings", "n_ctx") if config.get(k)),
        None,
    )
    return (
        vocab if isinstance(vocab, int) else None,
        n_ctx if isinstance(n_ctx, int) else None,
    )


def tokenizer_vocab(folder: Path) -> dict[str, Any] | None:
    """A snapshot's tokenizer as data: {'vocab': token -> id, 'merges': [...]} read from
    `tokenizer.json` or `vocab.json` + `merges.txt` without building a tokenizer; None when
    the snapshot holds neither (or they do not parse)."""
    try:
        if (folder / "tokenizer.json").is_file():
            model = json.loads((folder / "tokenizer.json").read_text()).get("model", {})
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
            return {"vocab": model.get("vocab", {}), "merges": merges}
        if (folder / "vocab.json").is_file():
            vocab = json.loads((folder / "vocab.json").read_text())
            merges_path = folder / "merges.txt"
            lines = merges_path.read_text().splitlines() if merges_path.is_file() else []
            merges = [ln for ln in lines if ln and not ln.startswith("#version")]
            return {"vocab": vocab, "merges": merges}
    except (OSError, ValueError, AttributeError):
        return None
    return None


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub endpoint cannot be reached (a TCP connect within `timeout` s), or None."""
    from urllib.parse import urlparse

    from huggingface_hub.constants import ENDPOINT

    url = urlparse(ENDPOINT)
    host = url.hostname or "huggingface.co"
    return connect_problem(host, url.port or (443 if url.scheme == "https" else 80), timeout)
