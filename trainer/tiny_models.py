"""Tiny causal LMs built fully offline: a random-weights Qwen2 and a locally trained BPE tokenizer.

Tests and local runs need a real transformers model directory (``from_pretrained`` loads it,
``generate`` runs, ``apply_chat_template`` works) without downloading anything. The tokenizer is
a byte-level BPE trained with the ``tokenizers`` library on a small corpus (digits, arithmetic,
English words, chat markers), so every string round-trips and no token is unknown. Its pipeline
is Qwen2's (NFC, Qwen2's pre-tokenization split, byte-level BPE): transformers' ``AutoTokenizer``
loads a ``qwen2`` directory as ``Qwen2Tokenizer``, which rebuilds that pipeline from the vocab and
merges, so the tokenizer trained here and the one loaded back split text identically. The chat
template is ChatML, the Qwen2 format. Same seed and corpus → byte-identical weights and tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, "<|endoftext|>", "<|im_start|>", EOS_TOKEN]

# Qwen2's pre-tokenization split (contractions, letter runs, single digits, punctuation, newlines,
# spaces); the same pattern transformers' Qwen2Tokenizer installs when it loads the directory.
QWEN2_SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                       r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# ChatML, as Qwen2 writes it: one block per message, then the assistant header on request.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = ["the", "a", "an", "is", "are", "was", "be", "to", "of", "and", "in", "that", "it", "for", "on", "with", "as", "at", "by", "from", "this", "which", "what", "how", "why", "answer", "question", "number", "sum", "product", "difference", "total", "result", "step", "first", "then", "next", "finally", "so", "therefore", "because", "if", "else", "true", "false", "yes", "no", "correct", "wrong", "better", "worse", "response", "winner", "score", "system", "user", "assistant", "think", "reason", "solve", "compute", "check", "final", "value", "equal", "equals", "plus", "minus", "times", "divided", "half", "double", "square", "root", "prime", "even", "odd", "apple", "apples", "orange", "books", "price", "cost", "each", "more", "less", "than", "left", "right", "list", "item", "items", "user", "query", "relevant", "good", "bad", "clear", "helpful", "honest", "rubric", "criteria"]


def default_corpus(size: int = 400) -> list[str]:
    """A fixed small corpus: arithmetic with answers, word sentences, boxed answers, chat turns."""
    rng = random.Random(1234)  # fixed: the tokenizer does not depend on the model seed
    lines: list[str] = [" ".join(str(d) for d in range(10)), " ".join(_WORDS)]
    for _ in range(size):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        lines.append(f"What is {a} {op} {b}? {words}. The answer is \\boxed{{{value}}}.")
        lines.append(f"<|im_start|>user\n{words}?<|im_end|>\n<|im_start|>assistant\n{a} {op} {b} = {value}<|im_end|>")
    return lines


def train_tokenizer(corpus: list[str], vocab_size: int = 512) -> Any:  # a PreTrainedTokenizerFast
    """Byte-level BPE trained on ``corpus``, wrapped with pad/bos/eos tokens and the ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not corpus:
        raise ValueError("corpus: needs at least one line of text to train the tokenizer")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer: Any = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                        pad_token=PAD_TOKEN, additional_special_tokens=SPECIAL_TOKENS[2:4])  # type: ignore[no-untyped-call]
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(out_dir: Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                         corpus: list[str] | None = None, num_heads: int = 4, num_kv_heads: int = 2,
                         vocab_size: int = 512, max_position_embeddings: int = 1024) -> Path:
    """Write a tiny random-weights ``Qwen2ForCausalLM`` and its tokenizer to ``out_dir``; return it.

    ``hidden_size`` must be a multiple of ``num_heads``, and ``num_heads`` of ``num_kv_heads``.
    Weights depend only on ``seed`` and the sizes; the global torch RNG is left untouched.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus if corpus is not None else default_corpus(), vocab_size=vocab_size)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN],
                                               pad_token_id=ids[PAD_TOKEN])  # type: ignore[no-untyped-call]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
