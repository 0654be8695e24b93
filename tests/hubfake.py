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

from seedscope.hubcache import write_snapshot

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
    cache: Path, repo_id: str, step: int, model, tok_files: dict[str, Path], work: Path
) -> str:
    """A CRFM-layout snapshot: branch `checkpoint-N`, pytorch_model.bin, extra trainer files."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"pytorch_model-{step}.bin"
    torch.save(model.state_dict(), weights)
    files = {
        "config.json": model.config.to_json_string().encode(),
        "pytorch_model.bin": weights,
        "trainer_state.json": json.dumps({"global_step": step}).encode(),
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
