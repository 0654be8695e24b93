"""The per-token log-prob engine: log P(token | everything before it in its window), fast.

Every analysis of the study reads one table: for each run and checkpoint, the log-prob the
model assigns to every next token of the same eval windows. Conventions, everywhere:

    windows  int   [n_windows, window]   token ids
    out      f32   [n_windows, window]   out[w, t] = log P(windows[w, t] | windows[w, :t])
                                         for t >= 1; out[w, 0] = NaN (no context)

The off-by-one lives here and only here: the hidden state at position t - 1 predicts the
token at position t. The log-softmax over the vocabulary is never materialised for a whole
batch: the LM head runs on the flattened hidden states in row chunks of at most
`logits_budget_mb`, and each chunk contributes `logit[target] - logsumexp(logits)`.

On the storage side (`evaluate_to_file`, `load_logprobs`, `load_trajectories`), one unit
(run, step) is one `.npy` file under `<out>/<run>/step-<N>.npy` (full grid) and
`<out>/<run>/traj/step-<N>.npy` (the trajectory token subset, flat indices in
`<out>/trajectory_tokens.npy`); `<out>/manifest.json` lists the units that are complete.
Readers only trust the manifest. A full unit may also keep the model's top-k guesses at
every position, from the same forward pass (`<out>/<run>/topk/step-<N>.npy`, a structured
`[n_windows, window, k]` array of `id` and float16 `logprob`, same convention as `out`),
so the outlier tables never load weights again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from seedscope.core.errors import SeedscopeError
from seedscope.core.io import atomic_path, read_json

MANIFEST = "manifest.json"
TRAJECTORY_TOKENS = "trajectory_tokens.npy"
_DTYPES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- helpers


def resolve_device(device: str = "auto") -> Any:
    """`auto` -> CUDA when present, else CPU; an explicit device that is absent is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SeedscopeError(
            f"Unknown device {device!r}.", "use 'auto', 'cpu', 'cuda' or 'cuda:<index>'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SeedscopeError(
            f"Device {device!r} was asked for but torch sees no CUDA GPU.",
            "use device='auto' or 'cpu'.",
        )
    return dev


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in _DTYPES:
        raise SeedscopeError(f"Unknown dtype {dtype!r}.", f"use one of: {', '.join(_DTYPES)}.")
    return getattr(torch, dtype)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with `threads` intra-op threads (None/0: leave torch's setting), then
    restore the previous count."""
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_limits(model: Any) -> tuple[int, int | None]:
    """(vocab size, context length or None) read from a HF causal-LM config."""
    config = model.config
    vocab = int(config.vocab_size)
    n_ctx = None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            n_ctx = int(value)
            break
    return vocab, n_ctx


def as_windows(windows: Any) -> np.ndarray:
    """Token windows as a 2-D integer numpy array `[n_windows, window]` (memmaps stay lazy)."""
    try:
        import torch

        if isinstance(windows, torch.Tensor):
            windows = windows.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = windows if isinstance(windows, np.ndarray) else np.asarray(windows)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SeedscopeError(
            f"Token windows have shape {arr.shape}; a non-empty [n_windows, window] array "
            "is needed.",
            "pass a 2-D array of token ids, one row per window.",
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise SeedscopeError(
            f"Token windows have dtype {arr.dtype}; token ids must be integers.",
            "pass the eval token array as int32/int64.",
        )
    return arr


def check_windows(model: Any, windows: Any, source: str | None = None) -> np.ndarray:
    """Validate windows against the model before any heavy work; return them as numpy.

    Raises SeedscopeError (naming `source`, e.g. 'run small-x21 step 100') when a token id
    is outside `[0, vocab_size)` or the window is longer than the model's context.
    """
    arr = as_windows(windows)
    where = f" for {source}" if source else ""
    vocab, n_ctx = model_limits(model)
    if n_ctx is not None and arr.shape[1] > n_ctx:
        raise SeedscopeError(
            f"Windows of {arr.shape[1]} tokens are longer than the model's context of "
            f"{n_ctx} positions{where}.",
            f"cut the eval tokens into windows of at most {n_ctx} tokens.",
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        w, t = np.argwhere(arr == bad)[0]
        raise SeedscopeError(
            f"Token id {bad} at window {w}, position {t} is outside the model's vocabulary "
            f"[0, {vocab}){where}.",
            "tokenize the eval text with the suite's own tokenizer.",
        )
    return arr


def _heads(model: Any) -> tuple[Any, Any]:
    """(body returning hidden states, LM head) of a HF causal LM, or (None, None) when the
    model does not expose them (then full logits are computed per position chunk)."""
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None:
        return None, None
    return body, head


# ----------------------------------------------------------------------------- engine


def iter_logprobs(
    model: Any,
    windows: Any,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "float32",
    threads: int | None = None,
    source: str | None = None,
    logits_budget_mb: float = 64.0,
    top_k: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield `(first_window, logprobs [b, window] float32, top)` batch by batch (see
    `token_logprobs` for the arguments); validation happens before the first batch. With
    `top_k > 0`, `top` is the `[b, window, top_k]` `topk_dtype` array of the model's most
    likely next tokens at each position (row t: P(. | window[:t]); row 0 is id 0 and NaN),
    taken from the same logits chunks as the log-probs; else None."""
    import torch

    arr = check_windows(model, windows, source)
    if batch_size < 1:
        raise SeedscopeError(f"batch_size={batch_size} must be >= 1.", "use e.g. 16.")
    dev = resolve_device(device)
    tdtype = _torch_dtype(dtype)
    body, head = _heads(model)
    was_training = model.training
    model.eval()
    model.to(dev)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=tdtype)
        if tdtype != torch.float32
        else nullcontext()
    )
    n, window = arr.shape
    head_rows = _head_rows(model)
    rows_per_chunk = max(1, int(logits_budget_mb * 2**20 // (4 * head_rows)))
    k = min(int(top_k), head_rows)
    top_type = topk_dtype(head_rows)
    try:
        with torch_threads(threads), torch.inference_mode(), autocast:
            for start in range(0, n, batch_size):
                ids = torch.as_tensor(
                    np.asarray(arr[start : start + batch_size], dtype=np.int64), device=dev
                )
                b = ids.shape[0]
                out = torch.full((b, window), float("nan"), dtype=torch.float32, device=dev)
                top = None
                if k > 0:
                    top = np.zeros((b, window, k), dtype=top_type)
                    top["logprob"][:, 0] = np.nan
                if window > 1:
                    targets = ids[:, 1:].reshape(-1)
                    if body is not None:
                        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
                        flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
                        lp, guesses = _chunked_logprobs(flat, head, targets, rows_per_chunk, k)
                    else:
                        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
                        flat = logits.reshape(-1, logits.shape[-1])
                        lp, guesses = _chunked_logprobs(flat, None, targets, rows_per_chunk, k)
                    out[:, 1:] = lp.view(b, window - 1)
                    if top is not None:
                        ids_k, lp_k = (g.view(b, window - 1, k).cpu().numpy() for g in guesses)
                        top["id"][:, 1:] = ids_k
                        top["logprob"][:, 1:] = lp_k
                yield start, out.cpu().numpy(), top
    finally:
        model.train(was_training)


def _chunked_logprobs(
    flat: Any, head: Any, targets: Any, rows: int, top_k: int = 0
) -> tuple[Any, tuple[Any, Any] | None]:
    """log-softmax at `targets [N]`, `rows` positions at a time: `flat` is `[N, d]` hidden
    states passed through `head` (or `[N, vocab]` logits when `head` is None); each chunk
    gives target logit minus logsumexp, in float32. With `top_k > 0` also the `[N, top_k]`
    ids and log-probs of the most likely tokens (else None)."""
    import torch

    n = targets.shape[0]
    dev = targets.device
    out = torch.empty(n, dtype=torch.float32, device=dev)
    top_ids = torch.empty((n, top_k), dtype=torch.int64, device=dev) if top_k else None
    top_lp = torch.empty((n, top_k), dtype=torch.float32, device=dev) if top_k else None
    for s in range(0, n, rows):
        e = min(n, s + rows)
        logits = (head(flat[s:e]) if head is not None else flat[s:e]).float()
        tgt = logits.gather(1, targets[s:e, None]).squeeze(1)
        lse = torch.logsumexp(logits, dim=1)
        out[s:e] = tgt - lse
        if top_k:
            best = torch.topk(logits, top_k, dim=1)
            top_ids[s:e] = best.indices
            top_lp[s:e] = best.values - lse[:, None]
    return out, ((top_ids, top_lp) if top_k else None)


def _head_rows(model: Any) -> int:
    """Rows of the LM head's logits (the model's vocabulary where it exposes no head): the
    token ids a prediction can name."""
    head = _heads(model)[1]
    return int(head.weight.shape[0]) if head is not None else model_limits(model)[0]


def topk_dtype(vocab: int) -> np.dtype:
    """The stored top-k record: token `id` (uint16 when the vocabulary fits, else uint32)
    and its `logprob` (float16: three significant digits, enough to print a probability)."""
    return np.dtype([("id", "<u2" if vocab <= 2**16 else "<u4"), ("logprob", "<f2")])


def token_logprobs(
    model: Any,
    windows: Any,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "float32",
    threads: int | None = None,
    source: str | None = None,
    logits_budget_mb: float = 64.0,
) -> np.ndarray:
    """Per-token log-probs of `windows` under `model`: float32 `[n_windows, window]`.

    out[w, t] = log P(windows[w, t] | windows[w, :t]) for t >= 1 (natural log); out[w, 0]
    is NaN. `windows` is `[n_windows, window]` int (numpy, memmap or tensor). Runs under
    `torch.inference_mode()` in batches of `batch_size` windows; `device='auto'` picks CUDA
    when present; `dtype` 'bfloat16'/'float16' runs the model under autocast (the
    logsumexp is always float32); `threads` sets torch's intra-op threads for the call.
    The model is put in eval mode and moved to the device (its training flag is restored).
    Token ids outside the vocabulary or windows longer than the context raise
    SeedscopeError naming `source` before any evaluation.
    """
    arr = as_windows(windows)
    out = np.empty(arr.shape, dtype=np.float32)
    for start, lp, _ in iter_logprobs(
        model, arr, batch_size, device, dtype, threads, source, logits_budget_mb
    ):
        out[start : start + lp.shape[0]] = lp
    return out


# ----------------------------------------------------------------------------- storage


def evaluate_to_file(
    model: Any,
    windows: Any,
    out_path: str | os.PathLike[str],
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "float32",
    threads: int | None = None,
    source: str | None = None,
    logits_budget_mb: float = 64.0,
    top_k: int = 0,
    topk_path: str | os.PathLike[str] | None = None,
) -> str:
    """Stream `token_logprobs` batch by batch into a float32 `.npy` `[n_windows, window]`;
    return the file's sha256. With `top_k > 0`, the same pass writes the top-k guesses
    (`iter_logprobs`) to `topk_path`.

    Writes through `numpy.lib.format.open_memmap` on temp paths in the target folders and
    renames them into place only when complete (the top-k file first), so memory stays flat
    as the token count grows and no reader ever sees a half-written file.
    """
    arr = check_windows(model, windows, source)
    if top_k and topk_path is None:
        raise SeedscopeError("top_k > 0 needs a topk_path to write to.", "pass topk_path.")
    vocab = _head_rows(model)
    k = min(int(top_k), vocab)
    with atomic_path(out_path) as tmp, (
        atomic_path(topk_path) if k else nullcontext(None)
    ) as top_tmp:  # fmt: skip
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=arr.shape)
        top_mm = (
            np.lib.format.open_memmap(
                top_tmp, mode="w+", dtype=topk_dtype(vocab), shape=(*arr.shape, k)
            )
            if k
            else None
        )
        for start, lp, top in iter_logprobs(
            model, arr, batch_size, device, dtype, threads, source, logits_budget_mb, k
        ):
            mm[start : start + lp.shape[0]] = lp
            if top_mm is not None:
                top_mm[start : start + lp.shape[0]] = top
        for m in (mm, top_mm):
            if m is not None:
                m.flush()
        del mm, top_mm
        digest = file_sha256(tmp)
    return digest


def load_topk(out_dir: str | os.PathLike[str] | None, run: str, step: int) -> np.ndarray:
    """The top-k guesses `[n_windows, window, k]` (`topk_dtype`) a full unit of `run` at
    `step` kept (memory-mapped), or a one-line error naming the setting that keeps them."""
    from seedscope.core.paths import token_losses_dir

    out = Path(out_dir) if out_dir is not None else token_losses_dir()
    unit = _complete_units(out, run).get(int(step))
    if unit is None or not unit.get("topk_file"):
        raise SeedscopeError(
            f"The sweep in {out} kept no top-k predictions for run {run!r} at step {step}.",
            "set token_losses.top_k > 0 (and the step among its full steps), then `dvc repro`.",
        )
    return np.load(out / unit["topk_file"], mmap_mode="r")


def topk_relpath(run: str, step: int) -> str:
    """Relative path of a full unit's top-k file."""
    return f"{run}/topk/step-{step}.npy"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unit_relpath(run: str, step: int, trajectory: bool = False) -> str:
    """Relative path of a unit's file: `<run>/step-<N>.npy` or `<run>/traj/step-<N>.npy`."""
    return f"{run}/traj/step-{step}.npy" if trajectory else f"{run}/step-{step}.npy"


def unit_key(run: str, step: int) -> str:
    return f"{run}/step-{step}"


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an output folder (an empty one when none exists yet)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"units": {}}
    return read_json(path)


def _complete_units(out_dir: Path, run: str) -> dict[int, dict[str, Any]]:
    units = read_manifest(out_dir).get("units", {})
    return {int(u["step"]): u for u in units.values() if u.get("run") == run}


def load_logprobs(
    out_dir: str | os.PathLike[str] | None,
    runs: Sequence[str],
    step: int,
    mmap: bool = True,
) -> dict[str, np.ndarray]:
    """Full-grid log-probs `[n_windows, window]` of each run at `step`, from units the
    manifest marks complete (memory-mapped read-only by default)."""
    from seedscope.core.paths import token_losses_dir

    out = Path(out_dir) if out_dir is not None else token_losses_dir()
    result: dict[str, np.ndarray] = {}
    for run in runs:
        unit = _complete_units(out, run).get(int(step))
        if unit is None or not unit.get("file"):
            raise SeedscopeError(
                f"No complete full-grid log-probs for run {run!r} at step {step} in {out}.",
                "run the token-loss sweep for this run and step (stage `token_losses`).",
            )
        result[run] = np.load(out / unit["file"], mmap_mode="r" if mmap else None)
    return result


def load_trajectories(
    out_dir: str | os.PathLike[str] | None, run: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(steps [n_steps], logprobs [n_subset, n_steps])` of `run` on the trajectory token
    subset (flat indices in `<out>/trajectory_tokens.npy`), over every complete unit that
    stored it, steps ascending."""
    from seedscope.core.paths import token_losses_dir

    out = Path(out_dir) if out_dir is not None else token_losses_dir()
    units = {s: u for s, u in _complete_units(out, run).items() if u.get("traj_file")}
    if not units:
        raise SeedscopeError(
            f"No complete trajectory units for run {run!r} in {out}.",
            "run the token-loss sweep with steps ['all'] (or a trajectory subset).",
        )
    steps = np.array(sorted(units), dtype=np.int64)
    cols = [np.load(out / units[int(s)]["traj_file"]) for s in steps]
    return steps, np.stack(cols, axis=1)
