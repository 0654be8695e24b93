"""Benchmark of the per-token log-prob engine (seedscope.logprobs.engine); prints side-by-side ratios.

    .venv/bin/python benchmarks/bench_engine.py            # full (~5-10 min on 2 busy cores)
    .venv/bin/python benchmarks/bench_engine.py --quick    # shrunk (~2 min)

Measures, on the GPT-2 small architecture (random init, 124M params, vocab 50257, context
1024) and on a mini-suite-like GPT-2 (3 layers, d 128, vocab 512, context 128):
1. tokens/s of the engine vs a naive loop as users write it (one window at a time, full
   log_softmax, Python loop over positions);
2. achieved forward FLOP/s / the matmul FLOP/s torch reaches at the model's own shapes;
3. peak RSS of `evaluate_to_file` at 10k, 100k and 1M tokens (separate subprocesses);
4. checkpoint load time (seedscope.models.checkpoints.load_checkpoint from a hub cache) vs reading
   the same bytes from disk;
5. on a GPU: tokens/s and MFU in bf16, and max |log-prob error| vs fp32.
Not a test: numbers depend on the machine and on whoever else is using it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from seedscope.logprobs.engine import token_logprobs

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "mini": dict(n_layer=3, n_embd=128, n_head=4, vocab_size=512, n_positions=128),
}


def build(name: str, seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(**SHAPES[name], bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg).eval()


def windows_for(name: str, n: int, window: int, seed: int = 0) -> np.ndarray:
    vocab = SHAPES[name]["vocab_size"]
    return np.random.default_rng(seed).integers(0, vocab, size=(n, window))


def naive_loop(model, windows: np.ndarray) -> np.ndarray:
    """As users write it: one window at a time, full log_softmax, Python loop."""
    out = np.full(windows.shape, np.nan, dtype=np.float32)
    with torch.no_grad():
        for w in range(len(windows)):
            ids = torch.tensor(windows[w : w + 1])
            logp = torch.log_softmax(model(ids).logits[0], dim=-1)
            for t in range(1, windows.shape[1]):
                out[w, t] = logp[t - 1, windows[w, t]].item()
    return out


def forward_flops(name: str, window: int) -> float:
    """Matmul FLOPs of one forward pass per token: 24 d^2 per layer (qkv, proj, mlp),
    4 T d per layer for QK^T and AV (full, unmasked count), 2 d V for the LM head."""
    s = SHAPES[name]
    d, layers, vocab = s["n_embd"], s["n_layer"], s["vocab_size"]
    return layers * (24 * d * d + 4 * window * d) + 2 * d * vocab


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(name: str, rows: int, repeat: int = 3) -> float:
    """FLOP/s torch reaches on the model's own GEMM shapes ([rows, d] x [d, k]), weighted
    by each shape's share of the forward FLOPs."""
    s = SHAPES[name]
    d, vocab = s["n_embd"], s["vocab_size"]
    shapes = [(d, 3 * d, 1), (d, d, 1), (d, 4 * d, 1), (4 * d, d, 1)]
    total_flops, total_time = 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for k_in, k_out, _ in shapes:
        a, b = torch.randn(rows, k_in, generator=gen), torch.randn(k_in, k_out, generator=gen)
        t = timed(lambda a=a, b=b: a @ b, repeat) * s["n_layer"]
        total_flops += 2 * rows * k_in * k_out * s["n_layer"]
        total_time += t
    a, b = torch.randn(rows, d, generator=gen), torch.randn(d, vocab, generator=gen)
    total_time += timed(lambda: a @ b, repeat)
    total_flops += 2 * rows * d * vocab
    return total_flops / total_time


def bench_speed(name: str, n: int, window: int, batch: int, n_naive: int) -> dict:
    """Engine on `n` windows vs the naive loop on the first `n_naive` (rates, tokens/s)."""
    model = build(name)
    win = windows_for(name, n, window)
    token_logprobs(model, win[:1, :16], batch_size=1, device="cpu")  # warm-up
    t_engine = timed(lambda: token_logprobs(model, win, batch_size=batch, device="cpu"))
    t_naive = timed(lambda: naive_loop(model, win[:n_naive])) * n / n_naive
    a = token_logprobs(model, win, batch_size=batch, device="cpu")
    err = float(np.nanmax(np.abs(a[:1] - naive_loop(model, win[:1]))))
    tokens = n * window
    flop = forward_flops(name, window) * tokens
    peak = matmul_peak(name, rows=min(batch, n) * window)
    return {
        "model": name,
        "windows": f"{n}x{window}",
        "batch": batch,
        "engine_tok_s": tokens / t_engine,
        "naive_tok_s": tokens / t_naive,
        "speedup": t_naive / t_engine,
        "max_abs_diff_vs_naive": err,
        "engine_gflop_s": flop / t_engine / 1e9,
        "matmul_gflop_s": peak / 1e9,
        "roofline_fraction": flop / t_engine / peak,
    }


RSS_CHILD = """
import resource, sys, numpy as np, torch
sys.path.insert(0, {bench!r})
from bench_engine import build
from seedscope.logprobs.engine import evaluate_to_file
win = np.load({path!r}, mmap_mode="r")
evaluate_to_file(build("mini"), win, {out!r}, batch_size=64, device="cpu")
# VmHWM is this process's own high-water mark; ru_maxrss can carry the parent's over fork+exec
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
except OSError:
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(hwm)
"""


def bench_rss(token_counts: list[int], tmp: Path) -> list[dict]:
    window = SHAPES["mini"]["n_positions"]
    rows = []
    for tokens in token_counts:
        n = tokens // window
        path = tmp / f"win-{tokens}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, window))
        rng = np.random.default_rng(0)
        for s in range(0, n, 1000):
            mm[s : s + 1000] = rng.integers(0, 512, size=mm[s : s + 1000].shape)
        mm.flush()
        del mm
        code = RSS_CHILD.format(
            bench=str(Path(__file__).parent), path=str(path), out=str(tmp / f"lp-{tokens}.npy")
        )
        start = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "tokens": n * window,
                "peak_rss_mb": int(res.stdout.split()[-1]) / 1024,
                "seconds": seconds,
            }
        )
        path.unlink()
        (tmp / f"lp-{tokens}.npy").unlink()
    return rows


def bench_load(tmp: Path) -> dict:
    from seedscope.models.checkpoints import load_checkpoint
    from seedscope.models.hubcache import write_snapshot
    from seedscope.suites.registry import get_suite

    suite = get_suite("mini-smoke")
    run = suite.runs[0]
    model = build("gpt2-small")
    model.save_pretrained(tmp / "ckpt")
    files = {p.name: p for p in (tmp / "ckpt").iterdir()}
    cache = tmp / "cache"
    write_snapshot(cache, run.repo_id, suite.revision(suite.final_step), files)
    nbytes = sum(p.stat().st_size for p in files.values())
    weights = tmp / "ckpt" / "model.safetensors"

    def read_bytes():
        with open(weights, "rb") as handle:
            while handle.read(1 << 24):
                pass

    def load():
        load_checkpoint(suite, run.name, suite.final_step, cache, with_tokenizer=False)

    read_bytes(), load()  # warm the page cache for both
    t_read, t_load = timed(read_bytes, 3), timed(load, 3)
    return {
        "checkpoint_mb": nbytes / 1e6,
        "read_s": t_read,
        "load_s": t_load,
        "load_over_read": t_load / t_read,
    }


def bench_gpu(n: int, window: int, batch: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    model = build("gpt2-small")
    win = windows_for("gpt2-small", n, window)
    ref = token_logprobs(model, win, batch_size=batch, device="cuda", dtype="float32")
    token_logprobs(model, win[:batch], batch_size=batch, device="cuda", dtype="bfloat16")
    torch.cuda.synchronize()
    t = timed(
        lambda: token_logprobs(model, win, batch_size=batch, device="cuda", dtype="bfloat16"), 2
    )
    bf16 = token_logprobs(model, win, batch_size=batch, device="cuda", dtype="bfloat16")
    flop_s = forward_flops("gpt2-small", window) * n * window / t
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t_mm = timed(lambda: (a @ a, torch.cuda.synchronize()), 5)
    return {
        "device": torch.cuda.get_device_name(0),
        "bf16_tok_s": n * window / t,
        "mfu_vs_measured_bf16_gemm": flop_s / (2 * 8192**3 / t_mm),
        "max_abs_err_bf16_vs_fp32": float(np.nanmax(np.abs(bf16 - ref))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~2 min)")
    parser.add_argument("--skip", nargs="*", default=[], help="speed rss load gpu")
    args = parser.parse_args()
    q = args.quick
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    report: dict = {"quick": q}
    if "speed" not in args.skip:
        report["speed"] = [
            bench_speed("mini", 64 if q else 256, 128, 64, 8 if q else 16),
            bench_speed("gpt2-small", 2 if q else 4, 256 if q else 1024, 2, 1 if q else 2),
        ]
        for row in report["speed"]:
            print(json.dumps(row))
    with tempfile.TemporaryDirectory(prefix="seedscope-bench-") as tmp:
        if "rss" not in args.skip:
            counts = [10_000, 100_000, 300_000 if q else 1_000_000]
            report["rss"] = bench_rss(counts, Path(tmp))
            for row in report["rss"]:
                print(json.dumps(row))
            r = report["rss"]
            print(f"RSS growth {r[1]['tokens']} -> {r[2]['tokens']} tokens: "
                  f"{r[2]['peak_rss_mb'] / r[1]['peak_rss_mb'] - 1:+.1%}")  # fmt: skip
        if "load" not in args.skip:
            report["load"] = bench_load(Path(tmp))
            print(json.dumps(report["load"]))
    if "gpu" not in args.skip:
        gpu = bench_gpu(32, 1024, 16)
        print(json.dumps(gpu) if gpu else "no CUDA GPU: GPU benchmark skipped")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
