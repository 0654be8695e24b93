"""Training the seeds of one size as one stacked ensemble vs one model at a time, on one thread.

The mini-suite trains each seed as its own `GPT2LMHeadModel`; at the small shapes where an
induction head forms cheapest per token (batch 2-4 x 64) a step is dominated by fixed
per-step costs (module dispatch, optimizer), so E seeds stacked into one model whose every
weight has a leading seed axis should run E steps for much less than E times one step. This
benchmark measures that, side by side in one process, and checks the stacked model is the same
function: the weights of seed i map 1:1 onto a `GPT2LMHeadModel` (Conv1D layout, tied head)
whose logits equal the stacked model's slice i, and one AdamW step of the ensemble equals one
step of each model alone.

    .venv/bin/python benchmarks/bench_ensemble.py            # table for benchmarks/README.md
    .venv/bin/python benchmarks/bench_ensemble.py --quick    # fewer shapes and repeats

Not a test (it times things); the equality checks are printed and fail loudly.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from seedscope.models.train import TrainConfig, build_model

NAMES = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
         "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
         "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")  # fmt: skip


def hf_model(
    vocab: int, context: int, d: int, layers: int, heads: int, seed: int
) -> GPT2LMHeadModel:
    """The mini-suite's model, built by the trainer itself (`seedscope.models.train.build_model`)."""
    spec = {"n_layer": layers, "n_head": heads, "n_embd": d}
    return build_model(spec, vocab, 0, TrainConfig(context=context), init_seed=seed)


class StackedGPT2(torch.nn.Module):
    """E GPT-2 models as one: every parameter is `[E, ...hf shape]` (Conv1D weights stay
    `[in, out]`), the LM head is tied to the token embedding, dropout off."""

    def __init__(self, models: list[GPT2LMHeadModel]) -> None:
        super().__init__()
        cfg = models[0].config
        self.n_head, self.eps = cfg.n_head, cfg.layer_norm_epsilon
        self.n_layer = cfg.n_layer

        def stack(get) -> torch.nn.Parameter:  # type: ignore[no-untyped-def]
            return torch.nn.Parameter(torch.stack([get(m).detach().clone() for m in models]))

        self.wte = stack(lambda m: m.transformer.wte.weight)
        self.wpe = stack(lambda m: m.transformer.wpe.weight)
        self.ln_f_w = stack(lambda m: m.transformer.ln_f.weight)
        self.ln_f_b = stack(lambda m: m.transformer.ln_f.bias)
        self.blocks = torch.nn.ParameterList()
        for layer in range(cfg.n_layer):
            for name in NAMES:
                self.blocks.append(
                    stack(lambda m, n=name, i=layer: m.transformer.h[i].get_parameter(n))
                )

    def block(self, layer: int, name: str) -> torch.Tensor:
        return self.blocks[layer * len(NAMES) + NAMES.index(name)]

    @staticmethod
    def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        # x [E, B, T, D]; w, b [E, D]
        x = F.layer_norm(x, x.shape[-1:], eps=eps)
        return x * w[:, None, None] + b[:, None, None]

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Conv1D: x [E, B, T, in] @ w [E, in, out] + b [E, out]
        e, bsz, t, _ = x.shape
        y = torch.baddbmm(b[:, None], x.reshape(e, bsz * t, -1), w)
        return y.reshape(e, bsz, t, -1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [E, B, T] -> logits [E, B, T, V]."""
        e, bsz, t = ids.shape
        idx = torch.arange(e)[:, None, None]
        x = self.wte[idx, ids] + self.wpe[:, None, :t]
        for layer in range(self.n_layer):
            p = lambda n, layer=layer: self.block(layer, n)  # noqa: E731
            h = self._ln(x, p("ln_1.weight"), p("ln_1.bias"), self.eps)
            qkv = self._linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias"))
            q, k, v = qkv.split(qkv.shape[-1] // 3, dim=-1)
            d_head = q.shape[-1] // self.n_head

            def heads(z: torch.Tensor, d_head: int = d_head) -> torch.Tensor:
                return z.reshape(e * bsz, t, self.n_head, d_head).transpose(1, 2)

            a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
            a = a.transpose(1, 2).reshape(e, bsz, t, -1)
            x = x + self._linear(a, p("attn.c_proj.weight"), p("attn.c_proj.bias"))
            h = self._ln(x, p("ln_2.weight"), p("ln_2.bias"), self.eps)
            h = self._linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))
            h = F.gelu(h, approximate="tanh")
            x = x + self._linear(h, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
        x = self._ln(x, self.ln_f_w, self.ln_f_b, self.eps)
        return torch.einsum("ebtd,evd->ebtv", x, self.wte)

    def export(self, i: int, model: GPT2LMHeadModel) -> GPT2LMHeadModel:
        """Seed i's weights written into a `GPT2LMHeadModel` of the same config."""
        with torch.no_grad():
            model.transformer.wte.weight.copy_(self.wte[i])
            model.transformer.wpe.weight.copy_(self.wpe[i])
            model.transformer.ln_f.weight.copy_(self.ln_f_w[i])
            model.transformer.ln_f.bias.copy_(self.ln_f_b[i])
            for layer in range(self.n_layer):
                for name in NAMES:
                    model.transformer.h[layer].get_parameter(name).copy_(self.block(layer, name)[i])
        return model


def loss_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum over models of each model's mean next-token loss (so each model's gradient is its
    own mean loss's gradient)."""
    e, bsz, t, v = logits.shape
    nll = F.cross_entropy(
        logits[:, :, :-1].reshape(-1, v), ids[:, :, 1:].reshape(-1), reduction="none"
    )
    return nll.reshape(e, -1).mean(dim=1).sum()


def adamw(params, lr: float):  # type: ignore[no-untyped-def]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)


def check_equivalence(models: list[GPT2LMHeadModel], batch: torch.Tensor, lr: float) -> dict:
    """Logits of the stacked model vs each HF model, and the weights after one AdamW step."""
    stacked = StackedGPT2(models)
    with torch.no_grad():
        ours = stacked(batch)
        theirs = torch.stack([m(batch[i]).logits for i, m in enumerate(models)])
    logits_err = float((ours - theirs).abs().max())
    opt = adamw(stacked.parameters(), lr)
    loss_of(stacked(batch), batch).backward()
    opt.step()
    step_err = 0.0
    for i, m in enumerate(models):
        o = adamw(m.parameters(), lr)
        m(batch[i], labels=batch[i]).loss.backward()
        o.step()
        fresh = stacked.export(i, hf_model(*_shape(m), seed=0))
        for a, b in zip(m.parameters(), fresh.parameters(), strict=True):
            step_err = max(step_err, float((a - b).detach().abs().max()))
    return {"max |logits diff|": logits_err, "max |weight diff| after one step": step_err}


def _shape(m: GPT2LMHeadModel) -> tuple[int, int, int, int, int]:
    c = m.config
    return c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head


def time_steps(step, n: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of `step()` over n calls, after 3 warm-up calls."""
    for _ in range(3):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(e: int, bsz: int, context: int, d: int, heads: int, n: int, vocab: int = 512) -> dict:
    models = [hf_model(vocab, context, d, 2, heads, seed=s) for s in range(e)]
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab, (e, bsz, context), generator=g)
    opts = [adamw(m.parameters(), 1e-3) for m in models]

    def sequential() -> None:
        for i, m in enumerate(models):
            opts[i].zero_grad(set_to_none=True)
            m(batch[i], labels=batch[i]).loss.backward()
            opts[i].step()

    stacked = StackedGPT2(models)
    opt = adamw(stacked.parameters(), 1e-3)

    def ensemble() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(stacked(batch), batch).backward()
        opt.step()

    seq, ens = time_steps(sequential, n), time_steps(ensemble, n)
    return {"seeds": e, "batch": f"{bsz} x {context}", "d": d, "heads": heads,
            "sequential ms (all seeds)": 1e3 * seq, "stacked ms": 1e3 * ens,
            "speed-up": seq / ens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = [hf_model(512, 64, 128, 2, 8, seed=s) for s in range(3)]
    batch = torch.randint(0, 512, (3, 4, 64), generator=torch.Generator().manual_seed(1))
    checks = check_equivalence(models, batch, 1e-3)
    for k, v in checks.items():
        print(f"{k}: {v:.2e}")
        assert v < 1e-4 and math.isfinite(v), f"the stacked model is not the same function ({k})"
    shapes = [(5, 4, 64, 128, 8), (5, 2, 64, 128, 8), (5, 16, 128, 128, 8), (5, 4, 64, 64, 4)]
    if args.quick:
        shapes = shapes[:2]
    rows = [bench(*s, n=10 if args.quick else 30) for s in shapes]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
