"""Reading attention out of a Hugging Face model: hook names, the attention modules, eager
attention on demand, captured patterns, and where an induction head should look.

Training (its induction probe) and analysis 6 (head scores) both read attention through
this module, so the two measure induction with one definition.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from seedscope.core.errors import SeedscopeError

_HOOK_NAMES = {
    "pattern": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores",
    "z": "attn.hook_z",
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}


def act_name(name: str, layer: int) -> str:
    """TransformerLens-style canonical activation name, e.g. `act_name("pattern", 3)` ->
    `"blocks.3.attn.hook_pattern"`."""
    if name not in _HOOK_NAMES:
        raise SeedscopeError(
            f"Unknown activation name {name!r}.", f"use one of: {', '.join(_HOOK_NAMES)}."
        )
    return f"blocks.{int(layer)}.{_HOOK_NAMES[name]}"


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every layer, in order (HF GPT-2 and GPT-NeoX)."""
    base = getattr(model, "base_model", model)
    if hasattr(base, "h"):  # GPT-2
        return [block.attn for block in base.h]
    if hasattr(base, "layers") and all(hasattr(b, "attention") for b in base.layers):  # NeoX
        return [block.attention for block in base.layers]
    raise SeedscopeError(
        f"Cannot find the attention layers of a {type(model).__name__}.",
        "use a Hugging Face GPT-2 (GPT2LMHeadModel) or GPT-NeoX (Pythia) model.",
    )


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Switch `model` to eager attention (the only kind that returns attention weights;
    SDPA silently returns none) and restore the previous implementation on exit, even if
    the body raises."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if before != "eager" and before is not None:
            model.set_attn_implementation(before)


@contextmanager
def capture_attention(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record attention patterns during forward passes inside the block.

    Yields a dict `{act_name("pattern", layer): Tensor [batch, head, query_pos, key_pos]}`
    filled by forward hooks on every attention module (last forward pass wins). The model
    runs with eager attention inside the block; the hooks are removed and the attention
    implementation restored on exit, also when the body raises.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise SeedscopeError(
                    f"Layer {layer} returned no attention weights.",
                    'load the model with attn_implementation="eager".',
                )
            store[act_name("pattern", layer)] = weights.detach()

        return hook

    with eager_attention(model):
        try:
            for layer, module in enumerate(attention_modules(model)):
                handles.append(module.register_forward_hook(make_hook(layer)))
            yield store
        finally:
            for handle in handles:
                handle.remove()


def induction_positions(half_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Where an induction head looks on `[BOS, r_1..r_L, r_1..r_L]` (`L = half_len`): each
    second-copy query `r_j` (position `L + j`, j = 1..L) and the key right after that token's
    earlier occurrence (position `j + 1`; never BOS). Returns (queries, keys)."""
    queries = np.arange(half_len + 1, 2 * half_len + 1)
    return queries, queries - half_len + 1
