"""Batched KV-cached rollout over ``inputs_embeds`` with Gumbel soft thinking (SofT-GRPO, arXiv 2511.06411).

Thinking steps feed the Gumbel-softmax mixture of the top-K token embeddings; after the think-end marker the
answer is sampled discretely. Prompts are left-padded and every forward gets explicit ``position_ids``, so the
replay (:func:`softthink.replay.replay_loglik`) sees exactly the same positions. The official rollout runs in the
Soft-Thinking SGLang fork (``sglang/srt/layers/sampler.py``, ``update_topk_info`` in ``schedule_batch.py``).

The think boundary (marker, budget, Cold Stop, forced tokens) is :class:`softthink.think.ThinkBoundary`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Callable, List, Optional, Sequence

import torch

from .config import SoftGRPOConfig
from .noise import embedding_rms, make_noise, position_loglik
from .sampling import filter_distribution, filter_sparse, mix_embeddings
from .think import ThinkBoundary, ThinkEnd, resolve_think_end  # noqa: F401 (ThinkEnd re-exported)

__all__ = ["Trajectory", "concat_trajectories", "ThinkEnd", "resolve_think_end", "SoftRollout", "call_model", "prompt_positions",
           "GroupGenerators", "NonFiniteLogitsError", "chat_end_of_turn_id"]


class NonFiniteLogitsError(RuntimeError):
    """The model's next-token logits were NaN or +inf (or all -inf) for some rows during a rollout.

    Attributes:
        position: 0-based completion position (rollout step) at which it happened.
        rows: the batch rows affected (at least one).
        what: short description, e.g. ``"NaN logits"``.
    """

    def __init__(self, message: str, position: int, rows: List[int], what: str):
        super().__init__(message)
        self.position, self.rows, self.what = int(position), [int(r) for r in rows], what


class GroupGenerators:
    """One ``torch.Generator`` per block of contiguous batch rows (one block = one prompt's group).

    Every random draw of :meth:`SoftRollout.generate` is made block by block, each block from its own generator,
    so a group's samples depend only on its generator and its own rows: the same group gives the same
    completions whichever other groups share the batch (or the process). The trainer seeds one generator per
    prompt from ``(seed, step, global prompt index)`` (:func:`softthink.distributed.prompt_seed`).

    Args:
        generators: one generator per block.
        sizes: rows per block (``sum(sizes)`` = batch size B).
    Raises:
        ValueError: if the two lists differ in length or a size is < 1.
    """

    def __init__(self, generators: Sequence[torch.Generator], sizes: Sequence[int]):
        if len(generators) != len(sizes) or any(int(n) < 1 for n in sizes):
            raise ValueError(f"GroupGenerators: {len(generators)} generators for block sizes {list(sizes)}")
        self.generators = list(generators)
        self.sizes = [int(n) for n in sizes]

    @property
    def num_rows(self) -> int:
        """Total rows B covered by the blocks."""
        return sum(self.sizes)

    def slices(self):
        """``(generator, slice of rows)`` per block, in row order."""
        start = 0
        for g, n in zip(self.generators, self.sizes):
            yield g, slice(start, start + n)
            start += n


def _multinomial1(generator, probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs [B, V]`` (``[B, 1]`` long)."""
    return torch.multinomial(probs, 1, generator=generator)


def _draw(generator, fn, *rows: torch.Tensor):
    """``fn(generator, *rows)`` for a plain generator; for :class:`GroupGenerators`, ``fn`` per block on the block's
    rows with the block's generator, the results (tensors or dataclasses of tensors) concatenated along dim 0."""
    if not isinstance(generator, GroupGenerators):
        return fn(generator, *rows)
    parts = [fn(g, *(x[sl] for x in rows)) for g, sl in generator.slices()]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    return type(first)(**{f.name: torch.cat([getattr(p, f.name) for p in parts], 0) for f in fields(first)})


@dataclass
class Trajectory:
    """Response-aligned record of one rollout batch; ``L`` = longest generation.

    Attributes:
        tok: ``[B, L]`` long; the readable token (top id of a soft step, the sampled/forced id otherwise).
        ids: ``[B, L, K]`` long; the mixed ids for soft steps (``ids[..., 0] == tok`` elsewhere, rest = tok).
        y: ``[B, L, K]`` float32; perturbed log-probabilities of soft steps (0 elsewhere).
        support: ``[B, L, K]`` bool; ids with non-zero filtered probability at rollout (soft steps);
            ``[True, False, ...]`` for discrete steps.
        is_soft: ``[B, L]`` bool; explicit soft-step mask (never inferred from sentinel ids).
        forced: ``[B, L]`` bool; marker tokens fed after a thinking budget ran out (not sampled, no loss).
        answer_phase: ``[B, L]`` bool; sampled with the after-thinking settings (and temperature).
        resp_mask: ``[B, L]`` bool; 1 up to and including the first EOS (attention mask of the response).
        rollout_ell: ``[B, L]`` float32; log-likelihood from the rollout's own step logits (diagnostic).
        weight_entropy: ``[B, L]`` float32; entropy (nats) of the mixture weights of soft steps (0 elsewhere).
        think_len: ``[B]`` long; thinking steps generated (soft or discrete; a sampled marker counts, forced tokens do not).
        think_ended: ``[B]`` bool; the thinking phase ended by the marker or the budget.
        budget_hit: ``[B]`` bool; thinking ended because ``max_think_tokens`` ran out.
        eos: ``[B]`` bool; the completion ended with an EOS token (False = clipped at max length).
        emb_noise: ``[B, L, D]`` float32 additive input-embedding noise of soft steps (``soft_noise=
            "embedding_gaussian"``; zeros elsewhere), ``[B, L, 0]`` for the other variants.
        emb_sigma: ``[B]`` float32 std of that noise (0 when unused).
        cold_stopped: ``[B]`` bool; thinking ended by Cold Stop (``cold_stop_steps`` low-entropy steps).
    """

    tok: torch.Tensor
    ids: torch.Tensor
    y: torch.Tensor
    support: torch.Tensor
    is_soft: torch.Tensor
    forced: torch.Tensor
    answer_phase: torch.Tensor
    resp_mask: torch.Tensor
    rollout_ell: torch.Tensor
    weight_entropy: torch.Tensor
    think_len: torch.Tensor
    think_ended: torch.Tensor
    budget_hit: torch.Tensor
    eos: torch.Tensor
    emb_noise: torch.Tensor
    emb_sigma: torch.Tensor
    cold_stopped: torch.Tensor

    @property
    def loss_mask(self) -> torch.Tensor:
        """``[B, L]`` bool: positions that carry a policy-gradient loss (sampled response tokens)."""
        return self.resp_mask & ~self.forced

    def index(self, rows) -> "Trajectory":
        """The trajectory restricted to batch rows ``rows`` (a slice or an index tensor)."""
        return Trajectory(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def concat_trajectories(parts: Sequence[Trajectory]) -> Trajectory:
    """The rows of several trajectories in one, the shorter ones padded at the end of the response (zeros /
    False: outside ``resp_mask``, so the padding carries no loss and is never replayed)."""
    L = max(p.tok.shape[1] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 2 or t.shape[1] == L:
            return t
        return torch.cat([t, t.new_zeros((t.shape[0], L - t.shape[1], *t.shape[2:]))], 1)

    return Trajectory(**{f.name: torch.cat([pad(getattr(p, f.name)) for p in parts], 0) for f in fields(Trajectory)})


_SIG_CACHE: dict = {}


def _accepts(model, name: str) -> bool:
    if hasattr(model, "get_base_model"):  # a peft wrapper forwards **kwargs to the base model
        model = model.get_base_model()
    key = (type(model), name)
    if key not in _SIG_CACHE:
        params = inspect.signature(model.forward).parameters
        _SIG_CACHE[key] = name in params
    return _SIG_CACHE[key]


def call_model(model, *, cache=None, logits_to_keep: Optional[int] = None, **kwargs):
    """Call a causal LM with a KV cache and ``logits_to_keep`` under either transformers API.

    transformers >= 5 names the cache argument ``cache`` (``past_key_values`` is deprecated); 4.x uses
    ``past_key_values``. Returns ``(logits, cache)``; models without
    ``logits_to_keep`` get their full logits sliced.
    """
    if cache is not None:
        kwargs["cache" if _accepts(model, "cache") else "past_key_values"] = cache
    sliced = False
    if logits_to_keep is not None:
        if _accepts(model, "logits_to_keep"):
            kwargs["logits_to_keep"] = logits_to_keep
        else:
            sliced = True
    out = model(**kwargs)
    logits = out.logits
    if sliced:
        logits = logits[:, -logits_to_keep:]
    keys = out.keys() if hasattr(out, "keys") else ()
    # transformers 5 returns ``cache`` (reading ``past_key_values`` would log a deprecation); 4.x the latter.
    new_cache = out["cache"] if "cache" in keys else (out["past_key_values"] if "past_key_values" in keys else None)
    return logits, new_cache


def chat_end_of_turn_id(tokenizer) -> Optional[int]:
    """The special token with which the tokenizer's chat template closes an assistant turn, or None.

    Renders ``[user, assistant]`` with the chat template and returns the first token after the assistant's
    text if it is a special token: ``<|im_end|>`` for Qwen2.5 (whose EOS is ``<|endoftext|>``), ``<|eot_id|>``
    for Llama 3, ``<end_of_turn>`` for Gemma. None without a chat template, when the template cannot render
    that conversation, or when the turn ends with ordinary text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "softthinkturnmark"
    try:
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # a template that rejects this conversation (jinja raise_exception, role checks, ...)
        return None
    if not isinstance(text, str) or mark not in text:
        return None
    ids = tokenizer.encode(text.split(mark, 1)[1].lstrip(), add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | {
        int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return int(ids[0]) if ids and ids[0] in special else None


def prompt_positions(prompt_mask: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` position ids of left-padded prompts: ``(mask.cumsum(-1) - 1).clamp(min=0)``."""
    return (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)


def _check_finite(step: int, lg: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLogitsError` when a row of ``lg [B, V]`` has a NaN or +inf, or is all -inf
    (``torch.multinomial`` would fail on it with an opaque message)."""
    nan, pinf, ninf = torch.isnan(lg).any(-1), torch.isposinf(lg).any(-1), torch.isneginf(lg).all(-1)
    bad = nan | pinf | ninf
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        b = rows[0]
        what = "NaN logits" if nan[b] else ("+inf logits" if pinf[b] else "all logits -inf")
        raise NonFiniteLogitsError(f"rollout step {step}: the model produced {what} for batch rows {rows}",
                                   step, rows, what)


class SoftRollout:
    """KV-cached soft-thinking / discrete generator (SofT-GRPO, arXiv 2511.06411).

    Args:
        model: any ``AutoModelForCausalLM``-style module accepting ``inputs_embeds``, ``position_ids`` and a cache.
        tokenizer: its tokenizer (used to resolve the think-end marker and, in string mode, to decode).
        cfg: the run configuration (sampling, soft-thinking and think-boundary fields).
        eos_token_ids: ids that end a completion (default: the tokenizer's EOS, ``generation_config``'s and the
            chat template's end-of-turn token, :func:`chat_end_of_turn_id`).
    """

    def __init__(self, model, tokenizer, cfg: SoftGRPOConfig, eos_token_ids: Optional[Sequence[int]] = None):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.think = resolve_think_end(tokenizer, cfg) if cfg.use_thinking else None
        self.noise = make_noise(cfg)
        # K mixed embeddings, at most the vocabulary (as transformers clamps top_k): a tiny model under a K of 30
        self.soft_k = min(int(cfg.soft_top_k), int(model.get_input_embeddings().weight.shape[0]))
        # embedding-noise std in absolute units, fixed at construction (recorded in every trajectory)
        self.emb_sigma = (cfg.embed_noise_std * embedding_rms(model)) if self.noise.embedding_noise else 0.0
        if eos_token_ids is None:
            eos = set()
            if tokenizer.eos_token_id is not None:
                eos.add(int(tokenizer.eos_token_id))
            gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            if gen_eos is not None:
                eos.update([int(gen_eos)] if isinstance(gen_eos, int) else [int(e) for e in gen_eos])
            turn_end = chat_end_of_turn_id(tokenizer)
            if turn_end is not None:
                eos.add(turn_end)
            eos_token_ids = sorted(eos)
        if not eos_token_ids:
            raise ValueError("SoftRollout: no EOS token id (tokenizer.eos_token_id is None and none was given)")
        self.eos_token_ids = list(eos_token_ids)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        logits_hook: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
        max_new_tokens: Optional[int] = None,
    ) -> Trajectory:
        """Generate one completion per row.

        Args:
            prompt_ids: ``[B, P]`` long, left-padded.
            prompt_mask: ``[B, P]`` 0/1 attention mask (0 on the left padding).
            generator: dedicated generator for the Gumbel noise and the discrete samples, or a
                :class:`GroupGenerators` (one generator per block of rows; draws are made per block).
            logits_hook: optional ``f(step, logits [B, V]) -> logits`` applied to each step's raw logits before
                filtering (a logits processor; used e.g. to force tokens in tests).
            max_new_tokens: default ``cfg.max_completion_length``.
        Returns:
            :class:`Trajectory` with ``L <= max_new_tokens``.
        Raises:
            NonFiniteLogitsError: when a step's logits (after ``logits_hook``) are NaN or +inf, or all -inf, for
                some row (naming the step and the batch rows).
            ValueError: if ``generator`` is a :class:`GroupGenerators` that does not cover the batch.
        """
        cfg, model = self.cfg, self.model
        if isinstance(generator, GroupGenerators) and generator.num_rows != prompt_ids.shape[0]:
            raise ValueError(f"SoftRollout.generate: GroupGenerators cover {generator.num_rows} rows, "
                             f"the batch has {prompt_ids.shape[0]}")
        max_new = int(max_new_tokens or cfg.max_completion_length)
        was_training = model.training
        model.eval()
        try:
            return self._generate(prompt_ids, prompt_mask, generator, logits_hook, max_new)
        finally:
            model.train(was_training)

    def _candidates(self, lg: torch.Tensor, generator):
        """This step's candidates from the raw logits ``lg [B, V]``: ``(answer token [B], thinking token [B],
        soft token)``; the soft token (:class:`softthink.noise.NoiseSample` with vocabulary ids) is None in
        discrete mode. Draw order (answer sample, then thinking noise or sample) fixes the random stream."""
        cfg, K = self.cfg, self.soft_k
        T = cfg.temperature
        # Sparse filtered distributions ([B, top_k] values and ids): sampling cost independent of V.
        v_ans, i_ans = filter_sparse(lg, cfg.after_thinking_temperature, cfg.after_thinking_top_k,
                                     cfg.after_thinking_top_p, cfg.after_thinking_min_p)
        samp_ans = i_ans.gather(-1, _draw(generator, _multinomial1, v_ans)).squeeze(-1)
        v_th, i_th = filter_sparse(lg, T, cfg.top_k, cfg.top_p, cfg.min_p)
        if not cfg.soft_thinking:
            return samp_ans, i_th.gather(-1, _draw(generator, _multinomial1, v_th)).squeeze(-1), None
        if K > v_th.shape[-1]:  # mixture wider than the top-k filter: take the K best of the full V
            v_th, i_th = filter_distribution(lg, T, cfg.top_k, cfg.top_p, cfg.min_p).topk(K, dim=-1)
        st = _draw(generator, lambda g, v: self.noise.sample(v, K, g), v_th)
        st.ids = i_th.gather(-1, st.ids)
        return samp_ans, st.ids[:, 0], st

    def _generate(self, prompt_ids, prompt_mask, generator, logits_hook, max_new) -> Trajectory:
        cfg, model, think = self.cfg, self.model, self.think
        device = prompt_ids.device
        B = prompt_ids.shape[0]
        K = self.soft_k
        embed = model.get_input_embeddings()
        eos = torch.tensor(self.eos_token_ids, device=device)
        attn = prompt_mask.long()
        pos = prompt_positions(attn)
        logits, cache = call_model(
            model, input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        last_pos = pos[:, -1].clone()

        tb = ThinkBoundary(think, self.tokenizer, cold_stop_entropy=cfg.cold_stop_entropy,
                           cold_stop_steps=cfg.cold_stop_steps, batch_size=B, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        noise = self.noise
        D = embed.weight.shape[-1] if noise.embedding_noise else 0
        sigma = torch.full((B,), float(self.emb_sigma), device=device)
        Ta, T = cfg.after_thinking_temperature, cfg.temperature

        steps: List[tuple] = []  # per step: the columns stacked into the Trajectory below
        for step in range(max_new):
            lg = logits[:, -1].float()
            if logits_hook is not None:
                lg = logits_hook(step, lg).float()
            _check_finite(step, lg)
            forcing = tb.forcing
            samp_ans, think_tok, st = self._candidates(lg, generator)
            tok, in_think = tb.select(think_tok, samp_ans)
            ended = tb.ended_by_marker(tok, in_think, done)  # this step completes the think-end marker
            soft_now = in_think & ~ended if cfg.soft_thinking else torch.zeros_like(in_think)
            answer_now = ~tb.thinking

            ids1 = tok.unsqueeze(-1).expand(B, K)
            onehot_w = torch.zeros(B, K, device=device)
            onehot_w[:, 0] = 1.0
            if cfg.soft_thinking:
                ids = torch.where(soft_now[:, None], st.ids, ids1)
                y = torch.where(soft_now[:, None], st.y, torch.zeros_like(st.y))
                w = torch.where(soft_now[:, None], st.w, onehot_w)
                support = torch.where(soft_now[:, None], st.support, onehot_w.bool())
            else:
                ids, y, w, support = ids1.clone(), torch.zeros(B, K, device=device), onehot_w, onehot_w.bool()
            en = _draw(generator, lambda g, r: noise.embed_noise((r.shape[0], D), self.emb_sigma, g, device),
                       tb.think_len) if (cfg.soft_thinking and D) \
                else torch.zeros(B, D, device=device)
            en = en * soft_now[:, None]

            # Rollout-side log-likelihood from this step's logits (diagnostic; must equal the replay's).
            temp = torch.where(answer_now, torch.full_like(lg[:, 0], Ta), torch.full_like(lg[:, 0], T))
            scaled = lg / temp[:, None]
            ell = position_loglik(noise, scaled, tok, ids, y, support, soft_now, embed=embed, emb_noise=en,
                                  sigma=sigma)
            went = -(w.clamp_min(1e-30).log() * w).sum(-1) * soft_now

            live = ~done
            steps.append((tok, ids, y, support, soft_now, forcing, answer_now, live, ell, went, en))

            eos_now = torch.isin(tok, eos) & ~forcing
            tb.update(in_think, ended, eos_now, live, scaled)
            done = done | eos_now

            emb = mix_embeddings(embed, ids, w)
            if D:
                emb = emb + en.to(emb.dtype)
            emb = emb.unsqueeze(1)
            attn = torch.cat([attn, live.long()[:, None]], dim=1)
            last_pos = last_pos + 1
            if bool(done.all()) or step == max_new - 1:
                break
            logits, cache = call_model(
                model, inputs_embeds=emb, attention_mask=attn, position_ids=last_pos[:, None], cache=cache,
                use_cache=True, logits_to_keep=1,
            )
        tok, ids, y, support, soft, forced, answer, live, ell, went, en = (torch.stack(c, dim=1) for c in zip(*steps))
        return Trajectory(
            tok=tok, ids=ids, y=y.float(), support=support, is_soft=soft & live, forced=forced & live,
            answer_phase=answer, resp_mask=live, rollout_ell=ell * live, weight_entropy=went * live,
            think_len=tb.think_len, think_ended=tb.think_ended, budget_hit=tb.budget_hit, eos=done.clone(),
            emb_noise=en * live[..., None], emb_sigma=sigma, cold_stopped=tb.cold_stopped,
        )
