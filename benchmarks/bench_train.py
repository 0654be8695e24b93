"""Benchmark of mini-suite training speed on CPU; prints side-by-side ratios.

    .venv/bin/python benchmarks/bench_train.py            # ~4 min on an idle 2-core machine
    .venv/bin/python benchmarks/bench_train.py --quick    # ~1 min

For each mini-suite size in `params.yaml` (GPT2LMHeadModel built by `seedscope.models.train`), one
thread, the trainer's batch shape (batch_size x context), random tokens from the corpus's
vocabulary, AdamW step included, it measures training steps/s of:
1. fp32 eager (what the trainer does by default);
2. bf16 autocast (`TrainConfig.bf16: true`);
3. `torch.compile` (inductor, default mode), with its compile time reported separately and
   the number of steps after which compiling pays for itself;
4. batch shapes at a fixed token count per step (B x C = const), fp32;
5. the cost of one step at small batches (B x 64 tokens, B = 32, 8, 4, 2), fp32.
Not a test: numbers depend on the machine and on whoever else is using it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
import yaml

from seedscope.core.paths import project_root
from seedscope.models.train import TrainConfig, build_model


def _step_fn(model: Any, opt: torch.optim.Optimizer, bf16: bool) -> Any:
    def step(x: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def steps_per_s(
    spec: dict[str, int],
    cfg: TrainConfig,
    vocab: int,
    batch: int,
    context: int,
    steps: int,
    mode: str,
) -> tuple[float, float]:
    """(steps/s after warm-up, seconds of the first 3 steps incl. any compilation)."""
    cfg = TrainConfig(**{**cfg.__dict__, "context": context})
    model = build_model(spec, vocab, 0, cfg, 21)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    fwd = model
    if mode == "compile":
        fwd = torch.compile(model)
    step = _step_fn(fwd, opt, bf16=(mode == "bf16"))
    rng = np.random.default_rng(0)
    batches = [
        torch.from_numpy(rng.integers(1, vocab, size=(batch, context))) for _ in range(steps + 3)
    ]
    t0 = time.perf_counter()
    for x in batches[:3]:
        step(x)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for x in batches[3:]:
        step(x)
    return steps / (time.perf_counter() - t0), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, fewer shapes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = yaml.safe_load((project_root() / "params.yaml").read_text())
    cfg = TrainConfig.from_dict(params["train"])
    vocab = int(params["corpus"]["vocab_size"])
    n = 20 if args.quick else 60
    print(f"threads 1, batch {cfg.batch_size} x context {cfg.context}, vocab {vocab}, {n} steps")
    print(f"{'size':8} {'mode':8} {'steps/s':>8} {'x fp32':>7} {'first 3 steps (s)':>18}")
    for size, spec in cfg.sizes.items():
        base = None
        for mode in ("fp32", "bf16", "compile"):
            rate, first = steps_per_s(spec, cfg, vocab, cfg.batch_size, cfg.context, n, mode)
            base = base or rate
            line = f"{size:8} {mode:8} {rate:8.2f} {rate / base:7.2f} {first:18.1f}"
            if mode == "compile" and rate > base:
                extra = first - 3 / base
                line += f"   pays off after ~{extra / (1 / base - 1 / rate):.0f} steps"
            print(line, flush=True)
    tokens = cfg.batch_size * cfg.context
    shapes = [(tokens // c, c) for c in (32, 64, 128) if tokens // c >= 1]
    if args.quick:
        shapes = shapes[1:]
    print(f"\nbatch shapes at {tokens} tokens/step, fp32, size {list(cfg.sizes)[-1]}")
    spec = list(cfg.sizes.values())[-1]
    base = None
    for b, c in shapes:
        rate, _ = steps_per_s(spec, cfg, vocab, b, c, n, "fp32")
        base = base or rate
        print(
            f"  {b:4} x {c:4}: {rate:7.2f} steps/s  {rate / base:5.2f}x  {rate * tokens:9.0f} tok/s"
        )
    print("\nfixed cost per step: ms/step at context 64, fp32")
    for size, spec in cfg.sizes.items():
        cells = []
        for b in (32, 8, 4, 2):
            rate, _ = steps_per_s(spec, cfg, vocab, b, 64, n, "fp32")
            cells.append(f"{b} x 64: {1000 / rate:6.1f} ms ({rate * b * 64:6.0f} tok/s)")
        print(f"  {size:8} " + "   ".join(cells))


if __name__ == "__main__":
    main()
