#!/usr/bin/env python3
"""Write a tiny random-weight Qwen2 chat model that `vllm serve` on CPU can load.

usage: python3 tiny_model.py OUT_DIR

Runs inside the orchestrate/vllm-cpu image (it needs torch, tokenizers and transformers and
nothing from the network). orchestrate.images.make_tiny_model() runs it there.

What it writes, deterministically (same bytes on every run):
* a byte-level BPE tokenizer whose merges are learnt here, in plain Python, from a small
  built-in text, plus the ChatML specials <|endoftext|>, <|im_start|>, <|im_end|> and a ChatML
  chat template;
* Qwen2ForCausalLM with random fp32 weights: hidden 128, 4 attention heads, 2 KV heads (head_dim
  32, one of the sizes vLLM's CPU attention accepts), 4 layers, intermediate 256, tied
  embeddings. Heads, KV heads and layers all split evenly for tensor parallel 2 and pipeline
  parallel 2. The embedding rows of special tokens and of tokens without a letter are zero, so
  greedy decoding never picks them: replies are words (never empty or blank) and always run to
  max_tokens (finish_reason "length").

Files are staged in a hidden directory under OUT_DIR and moved into place at the end, with
config.json last, so a directory holding config.json and model.safetensors is complete. Every
file is made world-readable. The last line on stdout is a JSON summary.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from typing import Any

SEED = 424242
NUM_MERGES = 400
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIALS = (PAD, "<|im_start|>", EOS)

CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Text the BPE merges are learnt from: chat turns, code, numbers and the words tests tend to use.
TEXT = """\
Hello! Hello, world. Hi there, how are you today? I am fine, thank you.
You are a helpful assistant. Say hello. Tell me a joke. What is the answer?
The answer is 42. Count to ten: one two three four five six seven eight nine ten.
0 1 2 3 4 5 6 7 8 9 10 16 32 64 100 128 256 512 1024 2048 3.14 2.72 1e-6
The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.
A server starts, reports that it is healthy, loads a model and answers requests.
Nodes join a cluster over the network; every node runs workers and shares the load.
The model is split into layers and heads: tensor parallel and pipeline parallel ranks.
def main() -> int:
    for i in range(10):
        print("hello", i)
    return 0
{"model": "tiny", "messages": [{"role": "user", "content": "Say hello."}], "stream": true}
GET /health 200 OK; GET /v1/models; POST /v1/chat/completions; data: [DONE]
user assistant system content role stream tokens prompt completion usage finish length stop
"""


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE uses, indexed by byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def learn_merges(words: Counter[str], count: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            parts = splits[word]
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for word, parts in splits.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[word] = out
    return merges


# torch, tokenizers and transformers exist in the image, not necessarily where this is type-checked
def build_tokenizer() -> Any:  # transformers.PreTrainedTokenizerFast
    from tokenizers import (  # type: ignore[import-not-found,unused-ignore]
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words: Counter[str] = Counter()
    for line in TEXT.splitlines(keepends=True):
        words.update(piece for piece, _ in pre.pre_tokenize_str(line))
    merges = learn_merges(words, NUM_MERGES)

    vocab: dict[str, int] = {}
    for symbol in byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=["<|im_start|>", EOS],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, eos_id: int, pad_id: int, muted_ids: list[int]) -> Any:  # Qwen2ForCausalLM
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import Qwen2Config, Qwen2ForCausalLM  # type: ignore[import-not-found,unused-ignore]

    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    # Zero the (tied) embedding rows of muted tokens: their logits are then exactly 0 while some
    # other token's is positive, so greedy decoding never picks them.
    with torch.no_grad():
        model.get_input_embeddings().weight[muted_ids] = 0.0
    model.config.torch_dtype = torch.float32  # transformers 5 stores it as "dtype"
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = pad_id, eos_id, pad_id
    gen.do_sample = False
    return model


def write(out_dir: str) -> dict[str, object]:
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".tiny-model-", dir=out_dir)
    try:
        tok = build_tokenizer()
        eos_id = tok.convert_tokens_to_ids(EOS)
        pad_id = tok.convert_tokens_to_ids(PAD)
        # mute specials and tokens without a letter: replies are then words, never empty or blank
        muted = [i for i in range(len(tok)) if not re.search("[A-Za-z]", tok.decode([i]))]
        model = build_model(len(tok), eos_id, pad_id, muted)
        model.save_pretrained(stage, safe_serialization=True)
        tok.save_pretrained(stage)

        # tokenizer_config.json carries the template and specials itself (transformers 5 would
        # otherwise keep the template only in chat_template.jinja) and loads with 4.x and 5.x.
        tc_path = os.path.join(stage, "tokenizer_config.json")
        with open(tc_path, encoding="utf-8") as f:
            tc = json.load(f)
        tc.update(
            chat_template=CHAT_TEMPLATE,
            eos_token=EOS,
            pad_token=PAD,
            tokenizer_class="PreTrainedTokenizerFast",
        )
        with open(tc_path, "w", encoding="utf-8") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False, sort_keys=True)
            f.write("\n")

        names = sorted(os.listdir(stage))
        last = ["model.safetensors", "config.json"]
        for name in [n for n in names if n not in last] + last:
            src = os.path.join(stage, name)
            os.chmod(src, 0o644)
            os.replace(src, os.path.join(out_dir, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    os.chmod(out_dir, os.stat(out_dir).st_mode | 0o555)
    return {
        "out_dir": out_dir,
        "vocab_size": len(tok),
        "params": sum(p.numel() for p in model.parameters()),
        "eos_token_id": eos_id,
        "files": names,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(write(argv[0]), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
