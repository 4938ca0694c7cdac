"""Tiny tokenizers, models and configs built in code for the softthink tests and the benches' ``--smoke`` modes.

A tiny random Qwen2 and a WordLevel tokenizer (reserved ids: pad 0, bos 1, eos 2, ``</think>`` 3), a byte-level
BPE trained in code, and a small :class:`~softthink.config.SoftGRPOConfig`. Nothing is downloaded.
:func:`make_chat_tokenizer` adds a Qwen2.5-base-like chat layout: turns end with ``<|im_end|>`` (id 63), EOS stays
``</s>``.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from softthink.config import SoftGRPOConfig

SPECIALS = ["<pad>", "<s>", "</s>", "</think>"]
WORDS = [f"w{i}" for i in range(4, 64)]
PAD, BOS, EOS, THINK_END = 0, 1, 2, 3


def make_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """The WordLevel test tokenizer; ``add_bos=True`` makes it put ``<s>`` before plain text (like Llama's)."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w4"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["</think>"])
    tok.padding_side = "left"
    return tok


IM_START, IM_END = 62, 63


def make_chat_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-base layout: EOS ``</s>`` (2), chat turns ``<|im_start|>role ... <|im_end|>`` (ids 62, 63)."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS[:-2] + ["<|im_start|>", "<|im_end|>"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w4"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["</think>", "<|im_start|>", "<|im_end|>"])
    tok.padding_side = "left"
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    return tok


def make_model(seed: int = 0, vocab_size: int = 64, tie: bool = False) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                      max_position_embeddings=256, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                      attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).float().eval()
    return model


def base_config(**kw) -> SoftGRPOConfig:
    d = dict(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
             gradient_accumulation_steps=1, max_completion_length=24, think_end="</think>")
    d.update(kw)
    return SoftGRPOConfig(**d)


def left_padded_prompts(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def make_bpe_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in code on a few arithmetic sentences (any text encodes; survives save/load)."""
    from tokenizers import trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [f"Calculate {a} + {b}. The final answer is \\boxed{{{a + b}}}</think>" for a in range(10)
              for b in range(10)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["</think>"])
    tok.padding_side = "left"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    return tok


def save_tiny_model(path) -> str:
    """Save a random tiny Qwen2 (seed 0) with the byte-level BPE tokenizer to ``path``; return ``str(path)``."""
    tok = make_bpe_tokenizer()
    make_model(seed=0, vocab_size=len(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)
