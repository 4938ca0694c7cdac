"""Replay: per-position log-likelihood of a stored trajectory in one forward pass (SofT-GRPO, arXiv 2511.06411).

The same function gives the old, reference and new likelihoods (call it under ``torch.no_grad()`` for the first
two). Soft steps are scored with the density of the configured noise variant over the stored ids
(:mod:`softthink.noise`; Gumbel by default: :func:`softthink.sampling.soft_token_loglik`); discrete steps with
the ordinary token log-prob. No ``[B, L, V]`` log-softmax is built: the log-normaliser is computed in chunks
over ``L`` and only the ``K + 1`` needed logits are gathered. The official code replays in ``_forward_micro_batch``
of ``verl/workers/actor/dp_actor.py``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .config import SoftGRPOConfig
from .rollout import Trajectory, call_model, prompt_positions
from .noise import make_noise, position_loglik
from .sampling import mix_embeddings

__all__ = ["build_replay_inputs", "replay_loglik"]


def build_replay_inputs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, traj: Trajectory,
                        cfg: SoftGRPOConfig):
    """Input embeddings, attention mask and positions that reproduce the rollout.

    The response's last position is not fed (its logits are never needed). Soft positions get exactly the
    rollout's inputs for every noise variant: ``mix(ids, noise.weights(y))`` (+ the recorded embedding noise
    for ``soft_noise="embedding_gaussian"``). The official code rebuilds ``softmax(y / tau_g)`` for its Dirichlet
    and Gaussian ablations too, which differs from the ``x / sum x`` weights they fed at rollout.

    Returns:
        ``(inputs_embeds [B, P+L-1, D], attention_mask [B, P+L-1], position_ids [B, P+L-1])``.
    """
    embed = model.get_input_embeddings()
    L = traj.tok.shape[1]
    resp_tok = traj.tok[:, : L - 1]
    e_prompt = embed(prompt_ids)
    e_tok = embed(resp_tok)
    if bool(traj.is_soft[:, : L - 1].any()):
        # Rebuild exactly the rollout's weights from the stored (sorted) record, e.g. softmax(y / tau_g).
        w = make_noise(cfg).weights(traj.y[:, : L - 1])
        e_mix = mix_embeddings(embed, traj.ids[:, : L - 1], w)
        if traj.emb_noise.shape[-1]:
            e_mix = e_mix + traj.emb_noise[:, : L - 1].to(e_mix.dtype)
        e_resp = torch.where(traj.is_soft[:, : L - 1, None], e_mix, e_tok)
    else:
        e_resp = e_tok
    x = torch.cat([e_prompt, e_resp], dim=1)
    if cfg.detach_input_embeds:
        x = x.detach()
    pmask = prompt_mask.long()
    attn = torch.cat([pmask, traj.resp_mask[:, : L - 1].long()], dim=1)
    ppos = prompt_positions(pmask)
    rpos = ppos[:, -1:] + torch.arange(1, L, device=ppos.device)[None]
    return x, attn, torch.cat([ppos, rpos], dim=1)


def replay_loglik(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    traj: Trajectory,
    cfg: SoftGRPOConfig,
    *,
    compute_entropy: bool = False,
    chunk_size: int = 16,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-position log-likelihood ``ell [B, L]`` of ``traj`` under ``model`` (SofT-GRPO, arXiv 2511.06411).

    Args:
        model: the causal LM (policy, old policy or frozen reference).
        prompt_ids: ``[B, P]`` left-padded prompt ids used for the rollout.
        prompt_mask: ``[B, P]`` their attention mask.
        traj: the stored rollout.
        cfg: temperatures and the soft-token density settings.
        compute_entropy: also return the policy's token entropy ``[B, L]`` (nats, no gradient).
        chunk_size: positions per chunk for the log-normaliser and the entropy.
    Returns:
        ``(ell, entropy)``; ``ell`` is float32, differentiable w.r.t. the model's parameters, and 0 where
        ``traj.resp_mask`` is 0. ``entropy`` is None unless requested.
    Raises:
        ValueError: if the trajectory has soft steps and the noise has no density (``soft_noise="none"``, or
            Gumbel with ``noise_scale <= 0``).
    """
    noise = make_noise(cfg)
    if bool(traj.is_soft.any()) and not noise.has_density:
        raise ValueError(f"replay_loglik: soft steps need a noise density (soft_noise={cfg.soft_noise!r}, "
                         f"noise_scale={cfg.noise_scale}); a noiseless soft token has none")
    embed = model.get_input_embeddings()
    B, L = traj.tok.shape
    x, attn, pos = build_replay_inputs(model, prompt_ids, prompt_mask, traj, cfg)
    logits, _ = call_model(model, inputs_embeds=x, attention_mask=attn, position_ids=pos, use_cache=False,
                           logits_to_keep=L)
    temp = torch.where(traj.answer_phase, cfg.after_thinking_temperature, cfg.temperature).float()
    ells, ents = [], []
    for s in range(0, L, chunk_size):
        sl = slice(s, min(s + chunk_size, L))
        lg = logits[:, sl].float() / temp[:, sl, None]
        lse = lg.logsumexp(-1)
        ells.append(position_loglik(noise, lg, traj.tok[:, sl], traj.ids[:, sl], traj.y[:, sl], traj.support[:, sl],
                                    traj.is_soft[:, sl], embed=embed, emb_noise=traj.emb_noise[:, sl],
                                    sigma=traj.emb_sigma, lse=lse))
        if compute_entropy:
            with torch.no_grad():
                lgd = lg.detach()
                p = lgd.softmax(-1)
                ents.append(lse.detach() - (p * lgd).sum(-1))
    ell = torch.cat(ells, dim=1) * traj.resp_mask
    ent = torch.cat(ents, dim=1) * traj.resp_mask if compute_entropy else None
    return ell, ent
