"""The experiments behind docs/induction_recipe.md: when does an induction head form?

    # one mini-suite run on a corpus built here, with TrainConfig overrides (runs R*, L1)
    .venv/bin/python benchmarks/induction_search.py corpus --out /tmp/R8 --seed 49 \\
        --steps 80000 --every 2500 \\
        --corpus '{"window": 64, "repeat_fraction": 0.5, "n_train_tokens": 6000000}' \\
        --train '{"context": 64, "batch_size": 4, "lr": 1e-3, "warmup": 200}'
    # the checkpoint table and the repeat-id probe of whatever a run has reached so far
    .venv/bin/python benchmarks/induction_search.py report --out /tmp/R8 --seed 49
    # pure repeated random tokens, generated on the fly (runs X*, H*, S*, N*)
    .venv/bin/python benchmarks/induction_search.py synthetic --heads 4 --ctx 64 --batch 32

`corpus` trains with `seedscope.models.train.train_run` (the trainer the pipeline uses; the
checkpoint table carries the trainer's probe: tokens uniform over every id seen in
training) and, at the last checkpoint, adds the same probe restricted to the ids that occur
in the corpus's repeated random runs and the in-corpus loss on first vs later copies.
`--steps` sets the schedule and so the learning-rate decay; stop a long run at any time
(Ctrl-C: every checkpoint reached is kept, and rerunning the command resumes) and `report`.
Not a test: one run takes minutes to hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from seedscope.data.corpus import CorpusConfig, build_corpus
from seedscope.models.train import TrainConfig, build_model, induction_probe, load_corpus, train_run
from seedscope.suites.registry import Run, Suite


def repeat_ids_report(corpus_dir: Path, model: torch.nn.Module, eos: int) -> dict[str, float]:
    """Probe on the ids of the corpus's random runs + in-corpus first vs later-copy loss."""
    corpus = load_corpus(corpus_dir)
    meta = pd.read_parquet(corpus_dir / "eval_meta.parquet")
    ids = np.unique(meta.loc[meta.tag == "random_repeat", "token_id"].to_numpy())
    probe = induction_probe(model, ids[ids != eos], eos, (corpus.eval.shape[1] - 1) // 2)
    n = min(256, corpus.eval.shape[0])
    x = torch.from_numpy(corpus.eval[:n].astype(np.int64))
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0].numpy()
    width = corpus.eval.shape[1]
    rows = meta[meta.window < n]
    tag = rows.tag.to_numpy(dtype=object).reshape(n, width)[:, 1:]
    later = rows.second_copy.to_numpy(dtype=bool).reshape(n, width)[:, 1:]
    runs = tag == "random_repeat"
    return {
        **{f"repeat_ids_{k}": v for k, v in probe.items()},
        "in_corpus_first_copy_loss": float(nll[runs & ~later].mean()),
        "in_corpus_later_copy_loss": float(nll[runs & later].mean()),
    }


def plant_token_spans(tokens: np.ndarray, context: int, spec: dict, vocab: int, eos: int) -> int:
    """Into a share of the context-aligned chunks write [span, gap of text, span]: span ids
    uniform over every non-EOS id, random length and gap (no positional shortcut). In place;
    returns the number of chunks changed."""
    rng = np.random.default_rng(spec.get("seed", 0))
    lo, hi = spec.get("min_len", 8), spec.get("max_len", 20)
    ids = np.setdiff1d(np.arange(vocab), [eos])
    n_chunks = len(tokens) // context
    chosen = np.flatnonzero(rng.random(n_chunks) < spec.get("share", 0.5))
    for c in chosen:
        length = int(rng.integers(lo, hi + 1))
        gap = int(rng.integers(0, context - 2 * length))
        start = c * context + int(rng.integers(0, context - 2 * length - gap + 1))
        span = rng.choice(ids, size=length, replace=False)
        tokens[start : start + length] = span
        tokens[start + length + gap : start + 2 * length + gap] = span
    return len(chosen)


def _run(args: argparse.Namespace) -> Run:
    return Run(
        name=args.size, repo_id=f"search/{args.size}-x{args.seed}", seed=args.seed, size=args.size
    )


def run_corpus(args: argparse.Namespace) -> None:
    out = Path(args.out)
    corpus_dir = out / "corpus"
    if not (corpus_dir / "train_tokens.npy").is_file():
        build_corpus(CorpusConfig(**json.loads(args.corpus)), corpus_dir)
        spans = json.loads(args.spans)
        if spans:
            tokens = np.load(corpus_dir / "train_tokens.npy")
            corpus = load_corpus(corpus_dir)
            context = json.loads(args.train).get("context", TrainConfig().context)
            n = plant_token_spans(tokens, context, spans, corpus.vocab_size, corpus.eos_id)
            np.save(corpus_dir / "train_tokens.npy", tokens)
            print(f"planted token spans in {n} of {len(tokens) // context} chunks")
    (out / "train.json").write_text(args.train)
    suite = Suite(
        name="search",
        description="",
        architecture="gpt2",
        revision_format="checkpoint-{step}",
        tokenizer="local",
        steps=tuple(range(0, args.steps + 1, args.every)),
        runs=(),
    )
    cfg = TrainConfig(**json.loads(args.train))
    train_run(suite, _run(args), corpus_dir, out / "hub", cfg, progress=True, log_dir=out / "logs")
    run_report(args)


def run_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    stem = _run(args).repo_id.replace("/", "--")
    table = pd.read_parquet(out / "logs" / f"{stem}.checkpoints.parquet")
    print(table.round(3).to_string(index=False))
    state = torch.load(out / "logs" / f"{stem}.state.pt", weights_only=True)
    cfg = TrainConfig(**json.loads((out / "train.json").read_text()))
    corpus = load_corpus(out / "corpus")
    model = build_model(cfg.sizes[args.size], corpus.vocab_size, corpus.eos_id, cfg, args.seed)
    model.load_state_dict(state["model"])
    model.eval()
    report = repeat_ids_report(out / "corpus", model, corpus.eos_id)
    print(json.dumps({"step": int(state["step"]), **{k: round(v, 3) for k, v in report.items()}}))


def run_synthetic(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    vocab, ctx = 512, args.ctx
    config = GPT2Config(
        vocab_size=vocab, n_positions=ctx, n_embd=args.d, n_layer=2, n_head=args.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        scale_attn_weights=not args.no_attn_scale,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    rng = np.random.default_rng(args.seed)
    zipf = 1.0 / np.arange(1, vocab)
    zipf /= zipf.sum()

    def sequence() -> list[int]:
        out = [0]
        if rng.random() < args.repeat_share:  # spans of random ids, 2-3 copies back to back
            while len(out) < ctx:
                span = list(rng.integers(1, args.alphabet + 1, size=rng.integers(8, 33)))
                out += span * int(rng.integers(2, 4)) + [0]
        else:  # Zipf unigram text
            out += list(rng.choice(np.arange(1, vocab), size=ctx, p=zipf))
        return out[:ctx]

    ids = np.arange(1, args.alphabet + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(args.steps + 1):
        if step % args.every == 0:
            probe = induction_probe(model, ids, 0, (ctx - 1) // 2, seed=12345)
            print(json.dumps({"step": step, **{k: round(v, 3) for k, v in probe.items()}}))
        if step == args.steps:
            break
        x = torch.tensor([sequence() for _ in range(args.batch)])
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        model(x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert math.isfinite(probe["first_loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="one trainer run on a corpus built here")
    c.add_argument("--out", required=True, help="folder for corpus, hub cache and logs")
    c.add_argument("--size", default="medium")
    c.add_argument("--seed", type=int, default=21)
    c.add_argument("--steps", type=int, default=8000, help="schedule end (sets the lr decay)")
    c.add_argument("--every", type=int, default=500)
    c.add_argument("--corpus", default="{}", help="CorpusConfig overrides, JSON")
    c.add_argument("--train", default="{}", help="TrainConfig overrides, JSON")
    c.add_argument(
        "--spans", default="{}", help='token-level copies in train chunks, JSON: {"share": 0.5}'
    )
    c.set_defaults(func=run_corpus)
    r = sub.add_parser("report", help="checkpoint table + repeat-id probe of a corpus run")
    r.add_argument("--out", required=True)
    r.add_argument("--size", default="medium")
    r.add_argument("--seed", type=int, default=21)
    r.set_defaults(func=run_report)
    s = sub.add_parser("synthetic", help="pure repeated random tokens, generated on the fly")
    s.add_argument("--heads", type=int, default=8)
    s.add_argument("--d", type=int, default=128)
    s.add_argument("--ctx", type=int, default=64)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--warmup", type=int, default=50)
    s.add_argument("--steps", type=int, default=2000)
    s.add_argument("--every", type=int, default=250)
    s.add_argument("--alphabet", type=int, default=511, help="random ids are 1..alphabet")
    s.add_argument("--repeat-share", type=float, default=1.0, help="share of repeat sequences")
    s.add_argument("--no-attn-scale", action="store_true", help="scale_attn_weights=False")
    s.add_argument("--seed", type=int, default=21)
    s.set_defaults(func=run_synthetic)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
