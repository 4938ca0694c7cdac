"""Prompts in, token ids out, and completions back to text: the one place where training
(:class:`softthink.trainer.SoftGRPOTrainer`) and evaluation (:func:`softthink.evaluate.evaluate_model`) format and
tokenise (TRL's conventions: chat-message prompts through the chat template with a generation prompt, plain
strings verbatim).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from .rollout import Trajectory

__all__ = ["is_conversational", "prompt_texts", "preview", "encode_prompts", "tokenize_prompts", "dataset_rows",
           "completion_token_ids", "decode_completions"]


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def prompt_texts(tokenizer, prompts: Sequence[Any]) -> List[str]:
    """Prompt strings as fed to the tokenizer: chat messages through the chat template, strings verbatim."""
    texts = []
    for p in prompts:
        if is_conversational(p):
            texts.append(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False))
        elif isinstance(p, str):
            texts.append(p)
        else:
            raise ValueError(f"prompt must be a string or a list of chat messages, got {type(p).__name__}")
    return texts


def preview(prompt: Any, n: int = 60) -> str:
    text = prompt if isinstance(prompt, str) else str(prompt)
    return repr(text if len(text) <= n else text[:n] + "...")


def _plain_text_bos(tokenizer) -> Optional[int]:
    """The BOS id the tokenizer puts before plain text (``add_special_tokens=True``), or None when it defines no BOS
    token or does not add one (e.g. Qwen2 and SmolLM2 add none; Llama and Gemma add theirs)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return bos if with_special[:1] == [bos] and plain[:1] != [bos] else None


def encode_prompts(tokenizer, prompts: Sequence[Any]) -> List[List[int]]:
    """Prompt token ids: chat messages through the chat template (which places any BOS itself); plain strings
    verbatim plus exactly one BOS when the tokenizer adds one to plain text (none added if the text already
    starts with it)."""
    ids = tokenizer(prompt_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
    bos = _plain_text_bos(tokenizer)
    if bos is None:
        return [list(x) for x in ids]
    return [[bos] + list(x) if isinstance(p, str) and list(x[:1]) != [bos] else list(x) for p, x in zip(prompts, ids)]


def tokenize_prompts(tokenizer, prompts: Sequence[Any], max_prompt_length: int, device="cpu",
                     row_ids: Optional[Sequence[int]] = None):
    """Left-padded prompt ids and mask. Chat-message prompts get the chat template with a generation prompt;
    string prompts are used verbatim (TRL's convention), with the tokenizer's BOS in front when it adds one to
    plain text (exactly one).

    Args:
        row_ids: dataset row of each prompt, used only to name the offending row in errors.
    Returns:
        ``(ids [B, P], mask [B, P])``.
    Raises:
        ValueError: if a prompt is longer than ``max_prompt_length`` tokens (naming its dataset row, when given,
            its length and the limit), or the tokenizer has no pad token.
    """
    ids = encode_prompts(tokenizer, prompts)
    lengths = [len(x) for x in ids]
    i = max(range(len(ids)), key=lengths.__getitem__)
    if lengths[i] > max_prompt_length:
        where = f"the prompt of dataset row {row_ids[i]}" if row_ids is not None else f"prompt {i}"
        raise ValueError(f"{where} has {lengths[i]} tokens > max_prompt_length={max_prompt_length} "
                         f"({preview(prompts[i])})")
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
    P = lengths[i]
    input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids.to(device), mask.to(device)


def dataset_rows(dataset, where: str = "train_dataset") -> List[Dict[str, Any]]:
    """The rows of a ``datasets.Dataset`` or a list of dicts, checked: a ``prompt`` column, and the same columns
    in every row (as a ``datasets.Dataset`` has), so that no row lacks a column another row has.

    Raises:
        ValueError: naming ``where``, the row and the columns when the dataset is empty, ``prompt`` is missing
            or a row's columns differ from row 0's.
    """
    if hasattr(dataset, "column_names") and "prompt" not in dataset.column_names:
        raise ValueError(f"{where} needs a 'prompt' column; it has {dataset.column_names}")
    rows = [dict(r) for r in dataset]
    if not rows:
        raise ValueError(f"{where} is empty")
    if hasattr(dataset, "column_names"):  # a datasets.Dataset: every row has every column
        return rows
    if "prompt" not in rows[0]:
        raise ValueError(f"{where} needs a 'prompt' column; row 0 has {sorted(rows[0])}")
    cols = set(rows[0])
    for i, r in enumerate(rows):
        if set(r) != cols:
            missing, extra = sorted(cols - set(r)), sorted(set(r) - cols)
            raise ValueError(f"{where} row {i} has columns {sorted(r)} but row 0 has {sorted(cols)} (row {i} "
                             f"{'lacks ' + str(missing) if missing else 'adds ' + str(extra)}); every row needs the "
                             "same columns")
    return rows


def completion_token_ids(traj: Trajectory) -> List[List[int]]:
    """Per completion, the response ids up to and including its stop token (``tok[resp_mask]``)."""
    return [traj.tok[b][traj.resp_mask[b]].tolist() for b in range(traj.tok.shape[0])]


def decode_completions(tokenizer, traj: Trajectory) -> List[str]:
    """Readable completion texts: ``decode(tok[resp_mask])`` without special tokens (forced markers included)."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_token_ids(traj)]
