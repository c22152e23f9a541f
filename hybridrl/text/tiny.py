"""A tiny causal LM built from a config (no download): a character-level tokenizer and a 2-layer Llama, saved as a
``transformers`` model directory (``model.safetensors``, ``config.json``, ``tokenizer.json``).

Used by the tests and ``hybridrl text demo``; any real checkpoint directory works in their place.
"""

from __future__ import annotations

import os
from pathlib import Path

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"


def char_tokenizer(alphabet: str):
    """A ``PreTrainedTokenizerFast`` with one token per character of ``alphabet`` plus pad/eos/bos/unk (ids 0–3).

    Encoding splits every character; decoding concatenates without spaces. Built with the ``tokenizers`` library
    (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, BOS: 2, UNK: 3}
    for ch in dict.fromkeys(alphabet):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK,
                                   padding_side="left")


def build_tiny_model(out: str | os.PathLike, alphabet: str = "0123456789+=", hidden: int = 64, layers: int = 2,
                     heads: int = 4, max_len: int = 32, seed: int = 0) -> Path:
    """Write a randomly initialised Llama-architecture causal LM with a character tokenizer to ``out``.

    Args: ``hidden`` width, ``layers`` decoder blocks, ``heads`` attention heads (2 key/value heads),
    ``max_len`` positions. Returns the directory. Weights are saved as safetensors only.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tokenizer = char_tokenizer(alphabet)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=max_len, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
