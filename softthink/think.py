"""Where thinking ends: the think-end marker, the thinking budget, Cold Stop and the forced tokens they feed.

The official rollout (the Soft-Thinking SGLang fork used by SofT-GRPO, arXiv 2511.06411) ends thinking when a
soft token's top id is the think-end token; its rule misfires on models without a single think-end token (see
``last_subtoken``), so the boundary here is resolved once per tokenizer (:func:`resolve_think_end`):

* ``think_end`` is a single vocabulary token (``think_end_match="auto"``): thinking ends when the soft token's
  top id is that token; that step is recorded as a one-hot discrete step.
* otherwise (``"string"`` mode, or ``"auto"`` with ``max_think_tokens`` set): thinking ends when the decoded top
  ids of the thinking steps contain the ``think_end`` string (that step is one-hot), or after
  ``max_think_tokens`` thinking steps, in which case the marker's token ids are fed as ordinary forced tokens
  (recorded with ``forced=True``: they are inputs, not policy samples, and carry no loss).
* ``"last_subtoken"``: the official code's rule (the last sub-token of ``encode(think_end)``), kept only as a
  labelled parity option.

Cold Stop (Soft Thinking, arXiv 2505.15778) ends thinking after ``cold_stop_steps`` consecutive thinking steps
whose full ``softmax(logits / T)`` has entropy below ``cold_stop_entropy``; the marker is then fed as after a
spent budget. After a natural end, ``answer_prefix`` is fed as forced tokens before the answer is sampled.

:class:`ThinkBoundary` holds this per-row state for one rollout batch; :meth:`SoftRollout.generate
<softthink.rollout.SoftRollout.generate>` asks it each step which rows are forced and which still think, and
calls :meth:`ThinkBoundary.update` with what was generated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch

from .config import SoftGRPOConfig

__all__ = ["ThinkEnd", "resolve_think_end", "ThinkBoundary"]


@dataclass
class ThinkEnd:
    """Resolved think boundary: ``token_id`` (single-token rule) or ``marker_ids`` + ``text`` (string rule)."""

    mode: str  # "token" or "string"
    token_id: Optional[int]
    marker_ids: List[int]  # fed when the budget runs out: think_end (+ answer_prefix)
    text: str
    budget: Optional[int]
    prefix_ids: List[int] = dataclasses.field(default_factory=list)  # fed after a natural end: answer_prefix


def resolve_think_end(tokenizer, cfg: SoftGRPOConfig) -> ThinkEnd:
    """Resolve ``cfg.think_end`` against ``tokenizer`` once, at construction.

    Raises:
        ValueError: if the marker is not a single token, ``think_end_match="auto"`` and no ``max_think_tokens``
            budget is configured, or if the marker encodes to no tokens.
    """
    enc = list(tokenizer.encode(cfg.think_end, add_special_tokens=False))
    if not enc:
        raise ValueError(f"think_end={cfg.think_end!r} encodes to no tokens with this tokenizer")
    prefix = list(tokenizer.encode(cfg.answer_prefix, add_special_tokens=False)) if cfg.answer_prefix else []
    full = list(tokenizer.encode(cfg.think_end + cfg.answer_prefix, add_special_tokens=False))
    if cfg.think_end_match == "last_subtoken":
        return ThinkEnd("token", enc[-1], [enc[-1]] + prefix, cfg.think_end, cfg.max_think_tokens, prefix)
    if cfg.think_end_match == "auto" and len(enc) == 1:
        return ThinkEnd("token", enc[0], enc + prefix, cfg.think_end, cfg.max_think_tokens, prefix)
    if cfg.think_end_match == "auto" and cfg.max_think_tokens is None:
        raise ValueError(
            f"think_end={cfg.think_end!r} is not a single token in this tokenizer (it encodes to {enc}); "
            "set max_think_tokens (thinking then ends at that budget or when the string is produced, and the "
            "marker is fed as ordinary tokens), or think_end_match='last_subtoken' for the official rule"
        )
    return ThinkEnd("string", None, full, cfg.think_end, cfg.max_think_tokens, prefix)


class ThinkBoundary:
    """Per-row think-boundary state of one rollout batch of ``B`` rows.

    Args:
        think: the resolved boundary, or None for a rollout without a thinking phase (plain discrete GRPO).
        tokenizer: decodes the thinking steps for the string rule.
        cold_stop_entropy, cold_stop_steps: Cold Stop threshold (nats; 0 disables it) and run length.
        batch_size: ``B``; device: where the state tensors live.

    State (``[B]`` tensors): ``thinking`` (bool, still in the thinking phase), ``think_len`` (long, thinking
    steps so far: the step that produced a marker counts, forced tokens do not), ``think_ended`` / ``budget_hit`` / ``cold_stopped`` (bool, how it ended),
    and the forced-token queue position (``forcing``: a marker or answer prefix is being fed).
    """

    def __init__(self, think: Optional[ThinkEnd], tokenizer, *, cold_stop_entropy: float, cold_stop_steps: int,
                 batch_size: int, device) -> None:
        B = batch_size
        self.think, self.tokenizer = think, tokenizer
        self.active = think is not None
        self.cold_entropy, self.cold_steps = float(cold_stop_entropy), int(cold_stop_steps)
        self.cold_on = self.active and self.cold_entropy > 0
        self.thinking = torch.full((B,), self.active, dtype=torch.bool, device=device)
        self.think_len = torch.zeros(B, dtype=torch.long, device=device)
        self.think_ended = torch.zeros(B, dtype=torch.bool, device=device)
        self.budget_hit = torch.zeros(B, dtype=torch.bool, device=device)
        self.cold_stopped = torch.zeros(B, dtype=torch.bool, device=device)
        self._low_run = torch.zeros(B, dtype=torch.long, device=device)
        # Forced-token queues: 0 = the full marker (budget spent / Cold Stop), 1 = the answer prefix (natural end).
        queues = [think.marker_ids, think.prefix_ids] if self.active else [[0], []]
        self._qlen = torch.tensor([len(q) for q in queues], device=device)
        self._qmax = max(1, int(self._qlen.max()))
        self._qtab = torch.tensor([q + [0] * (self._qmax - len(q)) for q in queues], device=device)
        self._force_pos = torch.full((B,), -1, dtype=torch.long, device=device)
        self._force_kind = torch.zeros(B, dtype=torch.long, device=device)
        self._text_ids: List[List[int]] = [[] for _ in range(B)]

    @property
    def forcing(self) -> torch.Tensor:
        """``[B]`` bool: rows fed a forced token (marker or answer prefix) this step."""
        return self._force_pos >= 0

    def select(self, think_tok: torch.Tensor, answer_tok: torch.Tensor):
        """This step's token of every row from the candidates ``[B]``: the forced token, else the thinking
        candidate while thinking, else the answer candidate. Returns ``(tok [B], in_think [B] bool)``, where
        ``in_think`` marks rows whose token is a thinking step (thinking and not forced)."""
        forcing = self.forcing
        marker_tok = self._qtab[self._force_kind, self._force_pos.clamp(min=0, max=self._qmax - 1)]
        return torch.where(forcing, marker_tok, torch.where(self.thinking, think_tok, answer_tok)), \
            self.thinking & ~forcing

    def ended_by_marker(self, tok: torch.Tensor, in_think: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: thinking rows whose step ``tok`` completes the think-end marker (the token itself, or
        the decoded string within the last thinking steps). Rows already ``done`` are skipped."""
        ended = torch.zeros_like(in_think)
        if not self.active:
            return ended
        if self.think.mode == "token":
            return in_think & (tok == self.think.token_id)
        for b in (in_think & ~done).nonzero().flatten().tolist():
            self._text_ids[b].append(int(tok[b]))
            window = self._text_ids[b][-(len(self.think.marker_ids) + 4):]
            if self.think.text in self.tokenizer.decode(window):
                ended[b] = True
        return ended

    def update(self, in_think: torch.Tensor, ended: torch.Tensor, eos_now: torch.Tensor, live: torch.Tensor,
               scaled: torch.Tensor) -> None:
        """Advance the state after a step.

        Args:
            in_think: from :meth:`select`; ended: from :meth:`ended_by_marker`.
            eos_now: ``[B]`` bool, rows that produced a (non-forced) EOS this step.
            live: ``[B]`` bool, rows not finished before this step.
            scaled: ``[B, V]`` this step's logits divided by the thinking temperature (Cold Stop's entropy).
        """
        forcing = self.forcing
        self.think_len += (in_think & live).long()
        nxt = self._force_pos + 1
        finish_force = forcing & (nxt >= self._qlen[self._force_kind])
        self._force_pos = torch.where(forcing, torch.where(finish_force, torch.full_like(nxt, -1), nxt),
                                      self._force_pos)
        if self.active and self.think.prefix_ids:  # a natural end first feeds the answer prefix (queue 1)
            self._feed(ended, 1)
        leave = finish_force | ended
        over_budget = torch.zeros_like(ended)
        if self.active and self.think.budget is not None:
            # budget spent: the marker (one id in token mode) is fed as forced ordinary tokens from the next step
            over_budget = in_think & ~ended & ~eos_now & (self.think_len >= self.think.budget)
            self._feed(over_budget, 0)
            self.budget_hit |= over_budget & live
        if self.cold_on:
            # The entropy of the full softmax(logits / T), as in Soft Thinking, not of the top-k/top-p filtered
            # distribution (which is 0 whenever the top token alone reaches top_p).
            ent = torch.special.entr(scaled.softmax(-1)).sum(-1)
            step_think = in_think & ~ended & live
            self._low_run = torch.where(step_think, torch.where(ent < self.cold_entropy, self._low_run + 1,
                                                                torch.zeros_like(self._low_run)), self._low_run)
            cold = step_think & ~eos_now & (self._low_run >= self.cold_steps) & (self._force_pos < 0)
            if self.think.budget is not None:
                cold = cold & ~(self.think_len >= self.think.budget)  # the budget rule already fires this step
            self._feed(cold, 0)
            self.cold_stopped |= cold
        self.think_ended |= leave & live & self.thinking
        self.thinking = self.thinking & ~leave

    def _feed(self, rows: torch.Tensor, queue: int) -> None:
        """Start feeding forced queue ``queue`` to ``rows`` from the next step."""
        self._force_pos = torch.where(rows, torch.zeros_like(self._force_pos), self._force_pos)
        self._force_kind = torch.where(rows, torch.full_like(self._force_kind, queue), self._force_kind)
