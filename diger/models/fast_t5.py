"""A T5 encoder-decoder for short semantic-ID sequences, numerically the HF ``T5Model`` (``backbone: fast``).

The parameters have exactly the names and shapes of ``transformers.T5Model`` (``shared``,
``encoder.block.N.layer.0.SelfAttention.{q,k,v,o}``, ``...relative_attention_bias``, ``layer_norm``,
``DenseReluDense.{wi,wo}``, ``decoder.block.N.layer.1.EncDecAttention...``, ``final_layer_norm``), so an HF
state dict loads with ``load_state_dict`` (strict) and back, and in fp32 the outputs equal HF's within
rounding (tests/diger/test_fast_t5.py: 1e-5). Only the ReLU feed-forward (``feed_forward_proj: relu``, the
variant GenRec uses) is implemented. What differs is how the same arithmetic is laid out:

- the query/key/value projections of a layer are one matmul (weights concatenated per call, so the
  parameters stay HF's);
- the relative position buckets are computed once per sequence length and cached, the position bias
  once per forward (HF: once per forward too) and added to the padding mask once per forward, not once
  per layer;
- RMSNorm is one fused ``F.rms_norm`` call;
- beam search attends every beam of a user to that user's encoder keys/values directly (the beams are the
  query rows of one attention call), so neither the encoder states nor the cross-attention cache are ever
  copied per beam, and the self-attention cache is a plain ``[B, W, H, t, d_kv]`` tensor per layer.

The T5 architecture is Raffel et al. 2020 (JMLR 21(140)); the layer structure follows
``transformers/models/t5/modeling_t5.py`` (relative position buckets are computed by its own
``T5Attention._relative_position_bucket``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Attention


#: ``dropout_impl`` values: ``torch`` (``F.dropout``: HF's masks, bit for bit) and ``bits`` (:func:`bits_dropout`).
DROPOUT_IMPLS = ("torch", "bits")


def keep_mask(shape: Tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool ``shape`` mask, each entry False with probability ``round(p * 65536) / 65536`` (independently).

    Drawn as 16-bit integers sliced from full-range 64-bit random words of torch's default generator (one
    ``random_`` call), which on CPU costs about a sixth of ``bernoulli_`` (bench/speed_rec.py ``--dropout_impl``).
    ``p`` is quantised to 1/65536 (0.1 -> 0.1000061).
    """
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    return words.view(torch.int16)[:n].view(shape) >= (-32768 + round(p * 65536))


class _BitsDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        keep = keep_mask(tuple(x.shape), p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return torch.where(keep, g, 0).mul_(ctx.scale), None


def bits_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of ``x`` (any shape) with masks from :func:`keep_mask`: ``x * keep / (1 - p)``.

    The same distribution as ``F.dropout(x, p, True)`` up to the 1/65536 quantisation of ``p``, but another
    random stream, so runs differ from ``dropout_impl: torch`` bit for bit (ours; not in HF or the papers).

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"bits_dropout: p must be in [0, 1), got {p}")
    return x if p == 0.0 else _BitsDropout.apply(x, p)


class _RMSNorm(nn.Module):
    """T5's layer norm (scale only, no mean subtraction), as one ``F.rms_norm`` call."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class _Attention(nn.Module):
    """The four projections of one T5 attention (HF names), plus the relative position table in layer 0."""

    def __init__(self, cfg: T5Config, relative_bias: bool) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.n_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [..., L, d]`` -> query, key, value ``[..., H, L, d_kv]`` from one matmul."""
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight], 0)
        # split (backward: one cat), not indexing (backward: a zero-filled buffer per output)
        return tuple(self._heads(t) for t in F.linear(x, w).chunk(3, dim=-1))

    def kv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [..., L, d]`` -> key, value ``[..., H, L, d_kv]`` from one matmul."""
        w = torch.cat([self.k.weight, self.v.weight], 0)
        k, v = F.linear(x, w).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(self.q(x))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``[..., L, H*d_kv]`` -> ``[..., H, L, d_kv]``."""
        return t.unflatten(-1, (self.n_heads, self.d_kv)).transpose(-2, -3)

    def out(self, ctx: torch.Tensor) -> torch.Tensor:
        """``ctx [..., H, L, d_kv]`` -> ``[..., L, d]``."""
        return self.o(ctx.transpose(-2, -3).flatten(-2))


class _SelfLayer(nn.Module):
    def __init__(self, cfg: T5Config, relative_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = _Attention(cfg, relative_bias)
        self.layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class _CrossLayer(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.EncDecAttention = _Attention(cfg, False)
        self.layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class _DenseReluDense(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)


class _FFLayer(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = _DenseReluDense(cfg)
        self.layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class _Block(nn.Module):
    def __init__(self, cfg: T5Config, decoder: bool, relative_bias: bool) -> None:
        super().__init__()
        layers: List[nn.Module] = [_SelfLayer(cfg, relative_bias)]
        if decoder:
            layers.append(_CrossLayer(cfg))
        layers.append(_FFLayer(cfg))
        self.layer = nn.ModuleList(layers)


class _Stack(nn.Module):
    def __init__(self, cfg: T5Config, num_layers: int, decoder: bool, shared: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = shared  # tied, as in HF (never used: GenRec feeds embeddings)
        self.block = nn.ModuleList([_Block(cfg, decoder, i == 0) for i in range(num_layers)])
        self.final_layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class FastT5Model(nn.Module):
    """T5 encoder-decoder with HF ``T5Model``'s parameters and numerics, laid out for short sequences.

    Args:
        config: a ``transformers.T5Config`` with ``feed_forward_proj="relu"``.

    Raises:
        ValueError: a gated or non-ReLU feed-forward (only T5's original ReLU FFN is implemented).

    Shapes: :meth:`encode` ``[B, L, d]`` -> ``[B, L, d]``; :meth:`decode` ``[B, T, d]`` -> ``[B, T, d]``;
    beam search: :meth:`cross_kv` once per batch, then :meth:`decode_step` on ``[B, W, d]`` (one token for each
    of ``W`` beams of ``B`` users).
    """

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        if config.is_gated_act or config.dense_act_fn != "relu":
            raise ValueError(f"FastT5Model implements T5's ReLU feed-forward only, got feed_forward_proj="
                             f"{config.feed_forward_proj!r}; use backbone: hf_t5")
        self.config = config
        self.p = float(config.dropout_rate)
        self.dropout_impl = "torch"  # or "bits" (DROPOUT_IMPLS); set by GenRec
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = _Stack(config, config.num_layers, False, self.shared)
        self.decoder = _Stack(config, config.num_decoder_layers, True, self.shared)
        self._buckets: Dict[Tuple[int, int, int, bool], torch.Tensor] = {}

    # ----- helpers ----------------------------------------------------------------------------
    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not self.training:
            return x
        return bits_dropout(x, self.p) if self.dropout_impl == "bits" else F.dropout(x, self.p, True)

    def _position_bias(self, stack: _Stack, q_len: int, k_len: int, bidirectional: bool, offset: int = 0) -> torch.Tensor:
        """Relative position bias ``[1, H, q_len, k_len]`` of ``stack`` (queries at ``offset..offset+q_len-1``)."""
        table = stack.block[0].layer[0].SelfAttention.relative_attention_bias
        key = (q_len, k_len, offset, bidirectional)
        buckets = self._buckets.get(key)
        if buckets is None or buckets.device != table.weight.device:
            ctx = torch.arange(q_len, device=table.weight.device)[:, None] + offset
            mem = torch.arange(k_len, device=table.weight.device)[None, :]
            buckets = T5Attention._relative_position_bucket(
                mem - ctx, bidirectional=bidirectional, num_buckets=self.config.relative_attention_num_buckets,
                max_distance=self.config.relative_attention_max_distance)
            self._buckets[key] = buckets
        return table(buckets).permute(2, 0, 1).unsqueeze(0)

    @staticmethod
    def _key_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``mask [B, L]`` (True/1 = attend) -> additive ``[B, 1, 1, L]`` (0 or the dtype's minimum, as HF)."""
        neg = torch.finfo(dtype).min
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), neg)[:, None, None, :]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """T5 attention (no 1/sqrt(d) scaling): ``softmax(q k^T + bias)`` (dropout in training) ``@ v``."""
        if self.training and self.p > 0:
            w = torch.softmax((q @ k.transpose(-1, -2) + bias).float(), dim=-1).to(q.dtype)
            return self._drop(w) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)

    def _ff(self, layer: _FFLayer, h: torch.Tensor) -> torch.Tensor:
        f = layer.DenseReluDense
        x = torch.relu(F.linear(layer.layer_norm(h), f.wi.weight))
        return h + self._drop(F.linear(self._drop(x), f.wo.weight))

    # ----- encoder / teacher-forced decoder ---------------------------------------------------
    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder states ``[B, L, d]`` of input embeddings ``x [B, L, d]`` with ``mask [B, L]`` (1 = token)."""
        b, n, _ = x.shape
        bias = self._position_bias(self.encoder, n, n, True).to(x.dtype) + self._key_mask(mask, x.dtype)
        h = self._drop(x)
        for blk in self.encoder.block:
            sa = blk.layer[0]
            q, k, v = sa.SelfAttention.qkv(sa.layer_norm(h))
            h = h + self._drop(sa.SelfAttention.out(self._attend(q, k, v, bias)))
            h = self._ff(blk.layer[1], h)
        return self._drop(self.encoder.final_layer_norm(h))

    def decode(self, y: torch.Tensor, enc: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder states ``[B, T, d]`` of ``y [B, T, d]`` (causal) over ``enc [B, L, d]``."""
        t = y.shape[1]
        causal = torch.full((t, t), torch.finfo(y.dtype).min, dtype=y.dtype, device=y.device).triu(1)
        self_bias = self._position_bias(self.decoder, t, t, False).to(y.dtype) + causal
        cross_bias = self._key_mask(enc_mask, y.dtype)
        h = self._drop(y)
        for blk in self.decoder.block:
            sa, ca = blk.layer[0], blk.layer[1]
            q, k, v = sa.SelfAttention.qkv(sa.layer_norm(h))
            h = h + self._drop(sa.SelfAttention.out(self._attend(q, k, v, self_bias)))
            q = ca.EncDecAttention.query(ca.layer_norm(h))
            k, v = ca.EncDecAttention.kv(enc)
            h = h + self._drop(ca.EncDecAttention.out(self._attend(q, k, v, cross_bias)))
            h = self._ff(blk.layer[2], h)
        return self._drop(self.decoder.final_layer_norm(h))

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                decoder_inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Decoder states ``[B, T, d]`` (HF ``T5Model(...).last_hidden_state``)."""
        return self.decode(decoder_inputs_embeds, self.encode(inputs_embeds, attention_mask), attention_mask)

    # ----- incremental decoding for beam search ----------------------------------------------
    @torch.no_grad()
    def cross_kv(self, enc: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values ``[B, H, L, d_kv]`` of every decoder layer, once per user."""
        return [blk.layer[1].EncDecAttention.kv(enc) for blk in self.decoder.block]

    @torch.no_grad()
    def decode_step(self, y: torch.Tensor, pos: int, cross: List[Tuple[torch.Tensor, torch.Tensor]],
                    enc_mask: torch.Tensor, cache: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]
                    ) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """One decoder position for ``W`` beams of each of ``B`` users (inference: no dropout).

        Args:
            y: ``[B, W, d]`` input embedding of position ``pos`` for every beam.
            pos: the position (0 = the start token).
            cross: :meth:`cross_kv` of the users' encoder states.
            enc_mask: ``[B, L]`` encoder mask (1 = token).
            cache: per layer ``(keys, values)`` ``[B, W, H, pos, d_kv]`` of positions ``0..pos-1`` (already
                reordered to the current beams), or None at ``pos == 0``.

        Returns:
            ``(states [B, W, d], cache)``; the new cache holds positions ``0..pos``.
        """
        b, w, _ = y.shape
        bias = self._position_bias(self.decoder, 1, pos + 1, False, offset=pos).to(y.dtype)  # [1, H, 1, pos+1]
        cross_bias = self._key_mask(enc_mask, y.dtype)  # [B, 1, 1, L]
        h, new_cache = y, []
        for i, blk in enumerate(self.decoder.block):
            sa, ca = blk.layer[0], blk.layer[1]
            q, k, v = sa.SelfAttention.qkv(sa.layer_norm(h).unsqueeze(2))  # [B, W, H, 1, dk]
            if cache is not None:
                k = torch.cat([cache[i][0], k], dim=3)
                v = torch.cat([cache[i][1], v], dim=3)
            new_cache.append((k, v))
            scores = (q @ k.transpose(-1, -2)) + bias.unsqueeze(0)  # [B, W, H, 1, pos+1]
            ctx = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v  # [B, W, H, 1, dk]
            h = h + sa.SelfAttention.o(ctx.flatten(-3))
            # Cross-attention: the W beams of a user are the query rows of one attention over its encoder states.
            qc = ca.EncDecAttention.query(ca.layer_norm(h))  # [B, H, W, dk]
            kc, vc = cross[i]
            ctx = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=cross_bias, scale=1.0)
            h = h + ca.EncDecAttention.out(ctx)
            h = self._ff(blk.layer[2], h)
        return self.decoder.final_layer_norm(h), new_cache
