"""T5 encoder-decoder over semantic-ID tokens, shared by TIGER and DIGER (DIGER, arXiv 2601.19711).

Tokens enter as embeddings: one table per code position (``C = L + 1`` positions, the last being
the collision suffix), so the history ``[B, H]`` items become ``[B, H*C]`` token embeddings
(item-major), and the decoder predicts the ``C`` codes of the next item with logits tied to the
per-position tables. The design is ETEGRec's, as in the official DIGER code (``junchen-fu/DIGER`` ``model.py``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5Model

from .fast_t5 import DROPOUT_IMPLS, FastT5Model
from .trie import SIDTrie

#: ``backbone`` values: ``fast`` (:class:`~diger.models.fast_t5.FastT5Model`, the default) and ``hf_t5``
#: (``transformers.T5Model``, the reference). Both have the same parameters (HF names) and initial weights.
BACKBONES = ("fast", "hf_t5", "decoder")


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along dim 0 (``x [N, ...]``, ``index`` any shape -> ``[*index.shape, ...]``) via ``index_select``.

    Same values as ``x[index]``; its CPU backward (``index_add``) is deterministic whatever the thread
    count, while indexing's accumulating backward is not (two runs of one seed on 2 threads differ).
    """
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


class GenRec(nn.Module):
    """T5 generative recommender over semantic IDs.

    Args:
        vocab_sizes: codes per position ``[K_1, ..., K_L, suffix_size]``.
        d_model, d_ff, num_heads, d_kv, num_layers, num_decoder_layers, dropout: T5 sizes.
        decoder_layers: ``backbone: decoder`` only: the causal transformer's depth; ``None`` (default) is
            ``num_layers + num_decoder_layers`` (as deep as the T5's two stacks together).
        backbone: ``fast`` (default), ``hf_t5`` or ``decoder`` (:data:`BACKBONES`). The weights are drawn by
            ``transformers.T5Model`` in both cases, so one seed gives the same initial model, and the
            state dicts (``t5.*``) are interchangeable.
        dropout_impl: ``torch`` (default; HF's dropout masks) or ``bits`` (``fast`` only:
            :func:`diger.models.fast_t5.bits_dropout`, cheaper masks from another random stream).

    Raises:
        ValueError: an unknown ``backbone`` or ``dropout_impl``, ``dropout_impl: bits`` with ``hf_t5``, or
            ``decoder_layers`` below 1.

    Shapes: history codes ``[B, H, C]`` (``-1`` = padding) -> encoder ``[B, H*C, d_model]``;
    decoder input ``[B, C, d_model]`` (``[BOS, c_1..c_{C-1}]``) -> logits, one ``[B, K_j]`` per position.
    """

    def __init__(self, vocab_sizes: Sequence[int], *, d_model: int = 128, d_ff: int = 512, num_heads: int = 4,
                 d_kv: int = 32, num_layers: int = 2, num_decoder_layers: int = 2, dropout: float = 0.1,
                 max_positions: int = 512, backbone: str = "fast", dropout_impl: str = "torch",
                 decoder_layers: Optional[int] = None) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if dropout_impl not in DROPOUT_IMPLS:
            raise ValueError(f"dropout_impl must be one of {DROPOUT_IMPLS}, got {dropout_impl!r}")
        if dropout_impl != "torch" and backbone != "fast":
            raise ValueError(f"dropout_impl {dropout_impl!r} needs backbone: fast (hf_t5 uses torch's dropout)")
        self.backbone = backbone
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_positions = len(self.vocab_sizes)
        if backbone == "decoder":
            layers = num_layers + num_decoder_layers if decoder_layers is None else int(decoder_layers)
            if layers < 1:
                raise ValueError(f"decoder_layers must be >= 1, got {decoder_layers!r}")
            self._init_decoder(d_model, d_ff, num_heads, d_kv, layers, dropout, max_positions)
            return
        cfg = T5Config(vocab_size=1, d_model=d_model, d_ff=d_ff, num_heads=num_heads, d_kv=d_kv,
                       num_layers=num_layers, num_decoder_layers=num_decoder_layers, dropout_rate=dropout,
                       feed_forward_proj="relu", n_positions=max_positions, decoder_start_token_id=0,
                       pad_token_id=0, is_encoder_decoder=True, use_cache=False)
        self.t5 = T5Model(cfg)
        if backbone == "fast":
            with torch.device("meta"):  # no weights drawn: the random stream stays the one of hf_t5
                fast = FastT5Model(cfg)
            fast.load_state_dict(self.t5.state_dict(), assign=True)
            fast.dropout_impl = dropout_impl
            self.t5 = fast
        self._init_code_embeddings(d_model)

    def _init_code_embeddings(self, d_model: int) -> None:
        """Per-position code embeddings (tied to the logits), BOS and pad vectors, N(0, 0.02), drawn after the
        backbone's weights (so the T5 paths draw what they always drew)."""
        self.d_model = d_model
        self.code_emb = nn.ModuleList([nn.Embedding(k, d_model) for k in self.vocab_sizes])
        self.bos = nn.Parameter(torch.zeros(d_model))
        self.pad = nn.Parameter(torch.zeros(d_model))
        for e in self.code_emb:
            nn.init.normal_(e.weight, 0.0, 0.02)
        nn.init.normal_(self.bos, 0.0, 0.02)
        nn.init.normal_(self.pad, 0.0, 0.02)

    def _init_decoder(self, d_model, d_ff, num_heads, d_kv, layers, dropout, max_positions) -> None:
        """``backbone: decoder``: a causal transformer (transformers' ``LlamaModel``: RMSNorm, rotary positions,
        SwiGLU feed-forward) over the flattened semantic-ID tokens, ``layers`` deep (by default as deep as the T5's
        encoder plus decoder), fed
        ``inputs_embeds``; the same code embeddings, BOS / pad vectors and tied logits as the T5 path."""
        from transformers import LlamaConfig, LlamaModel

        cfg = LlamaConfig(vocab_size=1, hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=layers,
                          num_attention_heads=num_heads, num_key_value_heads=num_heads, head_dim=d_kv,
                          max_position_embeddings=max(max_positions, 1024), attention_dropout=dropout,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        self.lm = LlamaModel(cfg)
        self._init_code_embeddings(d_model)

    def _run_lm(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache=None):
        """``(hidden [B, T, d], cache)`` of the causal transformer over ``x [B, T, d]`` with key mask ``mask``
        ``[B, T_total]`` (0 = padding, which nothing attends to) and positions ``pos [B, T]``."""
        out = self.lm(inputs_embeds=x, attention_mask=mask.long(), position_ids=pos, cache=cache,
                      use_cache=cache is not None)
        keys = out.keys() if hasattr(out, "keys") else ()
        new = out["cache"] if "cache" in keys else (out["past_key_values"] if "past_key_values" in keys else None)
        return out.last_hidden_state, new

    def _decode_step_shared(self, x: torch.Tensor, pos: torch.Tensor, prefix_kv, prefix_bias: torch.Tensor, gen_kv):
        """One code position for ``W`` beams of each of ``B`` users through the causal LM's layers (inference):
        every beam attends to its user's history keys/values ``prefix_kv`` (per layer ``[B, H, L0, d]``, never
        copied per beam; ``prefix_bias [B, 1, 1, L0]`` masks the padding) and to its own generated codes
        ``gen_kv`` (per layer ``[B, W, H, t, d]``, None before the first code). ``x [B, W, d]`` at positions
        ``pos [B, W]``. The arithmetic of transformers' ``LlamaDecoderLayer`` (RMSNorm, rotary embedding,
        softmax attention, SwiGLU), laid out like ``FastT5Model.decode_step``. Returns ``(hidden [B, W, d],
        gen_kv)``."""
        lm = self.lm
        b, w, _ = x.shape
        cos, sin = lm.rotary_emb(x, pos)  # [B, W, d_head]
        cos, sin = cos[:, :, None], sin[:, :, None]

        def rope(t):  # t [B, W, H, d_head]
            half = t.shape[-1] // 2
            return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

        new_kv = []
        h = x
        for i, layer in enumerate(lm.layers):
            att = layer.self_attn
            hd = att.head_dim
            z = layer.input_layernorm(h)
            q = rope(att.q_proj(z).view(b, w, -1, hd))
            k = rope(att.k_proj(z).view(b, w, -1, hd))
            v = att.v_proj(z).view(b, w, -1, hd)
            kg, vg = (k.unsqueeze(3), v.unsqueeze(3)) if gen_kv is None else (
                torch.cat([gen_kv[i][0], k.unsqueeze(3)], 3), torch.cat([gen_kv[i][1], v.unsqueeze(3)], 3))
            new_kv.append((kg, vg))
            kp, vp = prefix_kv[i]
            s_p = torch.einsum("bwhd,bhld->bhwl", q, kp) * att.scaling + prefix_bias  # [B, H, W, L0]
            s_g = torch.einsum("bwhd,bwhtd->bhwt", q, kg) * att.scaling  # [B, H, W, t]
            p = torch.softmax(torch.cat([s_p, s_g], -1).float(), -1).to(q.dtype)
            l0 = s_p.shape[-1]
            o = torch.einsum("bhwl,bhld->bwhd", p[..., :l0], vp) + torch.einsum("bhwt,bwhtd->bwhd", p[..., l0:], vg)
            h = h + att.o_proj(o.reshape(b, w, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return lm.norm(h), new_kv

    def _decoder_prefix(self, enc_emb: torch.Tensor, enc_mask: torch.Tensor):
        """``[BOS, history tokens]``: embeddings ``[B, 1+L, d]``, mask, positions (padding skipped) and the index
        of the last real token of each row (the state that predicts the first code of the next item)."""
        b = enc_emb.shape[0]
        x = torch.cat([self.bos.to(enc_emb.dtype).expand(b, 1, -1), enc_emb], 1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.long, device=enc_emb.device), enc_mask.long()], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).amax(-1)
        return x, mask, pos, last

    def sequence_logits(self, tok_emb: torch.Tensor, item_mask: torch.Tensor) -> List[torch.Tensor]:
        """``backbone: decoder``, every next item of a sequence in one pass: per-item token embeddings
        ``[B, T, C, d]`` (items in time order, ``item_mask [B, T]`` True for real items, padding after them) ->
        a list of ``C`` tensors ``[B, T, K_j]``: the logits of code ``j`` of item ``k`` given items ``< k`` (and
        codes ``< j`` of item ``k``); item 0 is predicted from BOS alone."""
        b, t, c, d = tok_emb.shape
        x, mask, pos, _ = self._decoder_prefix(*self.encoder_inputs(tok_emb, item_mask))
        hid, _ = self._run_lm(x, mask, pos)
        # the token at flat index p = 1 + k*C + j is predicted from the state at p - 1 = k*C + j
        states = hid[:, : t * c].view(b, t, c, d)
        return [self.position_logits(states[:, :, j], j) for j in range(c)]

    # ----- embeddings -------------------------------------------------------------------------
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` codes (``-1`` = pad) -> ``[..., C, d]`` embeddings."""
        out = torch.stack([self.code_emb[j](codes[..., j].clamp_min(0)) for j in range(codes.shape[-1])], dim=-2)
        pad = (codes < 0).unsqueeze(-1)
        return torch.where(pad, self.pad.to(out.dtype), out)

    def encoder_inputs(self, token_emb: torch.Tensor, item_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flatten ``[B, H, C, d]`` per-item token embeddings to ``([B, H*C, d], mask [B, H*C])``."""
        b, h, c, d = token_emb.shape
        mask = item_mask.unsqueeze(-1).expand(b, h, c).reshape(b, h * c)
        return token_emb.reshape(b, h * c, d), mask

    def decoder_inputs(self, target_emb: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``[B, C, d]`` target-code embeddings -> ``[BOS, e_1, ..., e_{C-1}]``."""
        bos = self.bos.to(target_emb.dtype).expand(target_emb.shape[0], 1, -1)
        return torch.cat([bos, target_emb[:, :-1]], dim=1)

    # ----- forward ----------------------------------------------------------------------------
    def encode(self, enc_emb: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        if self.backbone == "fast":
            return self.t5.encode(enc_emb, enc_mask)
        return self.t5.encoder(inputs_embeds=enc_emb, attention_mask=enc_mask.long()).last_hidden_state

    def decode(self, dec_emb: torch.Tensor, enc: torch.Tensor, enc_mask: torch.Tensor, cache=None):
        if self.backbone == "fast":
            if cache is not None:
                raise ValueError("backbone fast: incremental decoding goes through beam_search")
            return self.t5.decode(dec_emb, enc, enc_mask), None
        out = self.t5.decoder(inputs_embeds=dec_emb, encoder_hidden_states=enc,
                              encoder_attention_mask=enc_mask.long(), cache=cache, use_cache=cache is not None)
        return out.last_hidden_state, out.cache

    def position_logits(self, hidden: torch.Tensor, j: int) -> torch.Tensor:
        """Logits ``[..., K_j]`` of code position ``j`` from decoder states ``[..., d]`` (tied to table ``j``)."""
        return hidden @ self.code_emb[j].weight.t()

    def forward(self, enc_emb, enc_mask, dec_emb) -> List[torch.Tensor]:
        """Teacher-forced logits: a list of ``C`` tensors ``[B, K_j]``.

        ``backbone: decoder`` reads ``[BOS, history, e_1 .. e_{C-1}]`` causally (``dec_emb`` is
        ``[BOS, e_1 .. e_{C-1}]``): code 0 from the last history state, code ``j`` from the state of ``e_j``.
        """
        if self.backbone == "decoder":
            x, mask, pos, last = self._decoder_prefix(enc_emb, enc_mask)
            b, c = dec_emb.shape[0], dec_emb.shape[1]
            x = torch.cat([x, dec_emb[:, 1:]], 1)
            mask = torch.cat([mask, torch.ones(b, c - 1, dtype=mask.dtype, device=mask.device)], 1)
            p_last = pos.gather(1, last[:, None])
            pos = torch.cat([pos, p_last + 1 + torch.arange(c - 1, device=pos.device)], 1)  # after the history
            hid, _ = self._run_lm(x, mask, pos)
            rows = torch.arange(b, device=hid.device)
            first = hid[rows, last]
            start = enc_emb.shape[1] + 1
            return [self.position_logits(first if j == 0 else hid[:, start + j - 1], j) for j in range(c)]
        enc = self.encode(enc_emb, enc_mask)
        hid, _ = self.decode(dec_emb, enc, enc_mask)
        return [self.position_logits(hid[:, j], j) for j in range(self.num_positions)]

    # ----- beam search ------------------------------------------------------------------------
    @torch.no_grad()
    def beam_search(self, enc_emb: torch.Tensor, enc_mask: torch.Tensor, trie: SIDTrie, num_beams: int,
                    constrained: bool = True, use_cache: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Beam search over the ``C`` code positions, accumulating log-probabilities.

        ``backbone: fast`` decodes all beams of a user against that user's encoder keys/values (one
        attention call, no per-beam copies); ``hf_t5`` uses HF's ``EncoderDecoderCache`` (``use_cache``)
        or re-runs the decoder over the whole prefix. Both give the same beams (tests/diger/test_fast_t5.py).

        With ``constrained`` the beams are restricted to prefixes present in ``trie`` (so every
        final beam is a distinct, valid item); otherwise decoding is free and beams that are not
        items map to ``-1`` (DIGER parity: ``my_beam_search`` in the official ``model.py`` is unconstrained).

        Returns:
            ``(items [B, num_beams] long, scores [B, num_beams])`` in descending score order; invalid
            or missing beams have item ``-1`` and score ``-inf``.
        """
        b = enc_emb.shape[0]
        fast = self.backbone == "fast"
        dec_only = self.backbone == "decoder"
        cache = None
        if dec_only:
            # [BOS, history] once per user (KV cache), then one token per beam per code position
            x0, dmask, pos0, last = self._decoder_prefix(enc_emb, enc_mask)
            rows0 = torch.arange(b, device=x0.device)
            dpos = pos0[rows0, last] + 1  # position of the next token, per row
            prefix_kv, gen_kv = None, None
            if use_cache:
                from transformers.cache_utils import DynamicCache

                cache = DynamicCache(config=self.lm.config)
            hid, cache = self._run_lm(x0, dmask, pos0, cache)
            if cache is not None:  # the history's keys/values once per user, shared by all of its beams
                prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
                prefix_bias = torch.zeros(dmask.shape, dtype=x0.dtype, device=x0.device).masked_fill(
                    dmask == 0, torch.finfo(x0.dtype).min)[:, None, None, :]  # [B, 1, 1, L0]
            hid = hid[rows0, last].unsqueeze(1)  # [B, 1, d]
            enc0 = mask0 = None
        elif fast:
            enc0, mask0 = self.encode(enc_emb, enc_mask), enc_mask
            # Keys/values of the encoder states once per user; every beam attends to them directly.
            cross = self.t5.cross_kv(enc0)
            hid, cache = self.t5.decode_step(self.bos.expand(b, 1, -1), 0, cross, mask0, None)  # [B, 1, d]
        else:
            enc0, mask0 = self.encode(enc_emb, enc_mask), enc_mask
            if use_cache:
                from transformers.cache_utils import DynamicCache, EncoderDecoderCache

                cfg = self.t5.decoder.config
                cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
            hid, cache = self.decode(self.bos.expand(b, 1, -1), enc0, mask0, cache)
            hid = hid[:, -1:]
        logp = F.log_softmax(self.position_logits(hid, 0).float(), dim=-1)  # [B, 1, K0]
        node = torch.zeros(b, 1, dtype=torch.long, device=logp.device)
        scores = torch.zeros(b, 1, device=logp.device)
        seqs = torch.zeros(b, 1, 0, dtype=torch.long, device=logp.device)
        nb_prev = 1
        # hf_t5: per-beam copies of the encoder states and mask, rebuilt only when the beam width changes (in
        # practice once, after the first position): every beam of a user attends to the same encoder states.
        expanded_width, enc_b, mask_b = 0, enc0, mask0
        user_ids = torch.arange(b, device=logp.device)
        for j in range(self.num_positions):
            k = self.vocab_sizes[j]
            total = scores.unsqueeze(-1) + logp.view(b, nb_prev, k)
            if constrained:
                child = trie.children[j][node.clamp_min(0)]  # [B, nb_prev, K]
                total = total.masked_fill((child < 0) | (node < 0).unsqueeze(-1), float("-inf"))
            width = min(num_beams, nb_prev * k)
            scores, flat = total.view(b, -1).topk(width, dim=-1)
            origin, code = flat // k, flat % k
            seqs = torch.cat([seqs.gather(1, origin.unsqueeze(-1).expand(-1, -1, seqs.shape[-1])), code.unsqueeze(-1)], -1)
            if constrained:
                node = child.gather(1, origin.unsqueeze(-1).expand(-1, -1, k)).gather(2, code.unsqueeze(-1)).squeeze(-1)
                node = torch.where(torch.isfinite(scores), node, torch.full_like(node, -1))
            if j == self.num_positions - 1:
                break
            # Next decoder step for every surviving beam (beam width may grow while K_j is small).
            step_emb = self.code_emb[j](code)  # [B, width, d]
            if dec_only and prefix_kv is not None:
                rows = user_ids.unsqueeze(1)
                if gen_kv is not None:  # the generated codes' keys/values follow the surviving beams
                    gen_kv = [(kk[rows, origin], vv[rows, origin]) for kk, vv in gen_kv]
                hid, gen_kv = self._decode_step_shared(step_emb, (dpos + j)[:, None].expand(b, width), prefix_kv,
                                                       prefix_bias, gen_kv)
            elif dec_only:  # no cache: the whole sequence again, [BOS, history, codes so far], for every beam
                beam_rows = (user_ids.unsqueeze(1) * nb_prev + origin).reshape(-1)
                dpos, dmask = dpos[beam_rows], dmask[beam_rows]
                dmask = torch.cat([dmask, torch.ones_like(dmask[:, :1])], 1)
                users = user_ids.repeat_interleave(width)
                flat_seqs = seqs.reshape(b * width, -1)
                codes = torch.stack([self.code_emb[i](flat_seqs[:, i]) for i in range(j + 1)], 1)
                x = torch.cat([x0[users], codes], 1)
                pos = torch.cat([pos0[users], (dpos - j)[:, None] + torch.arange(j + 1, device=dpos.device)], 1)
                hid, _ = self._run_lm(x, dmask, pos)
                hid = hid[:, -1].view(b, width, -1)
                dpos = dpos + 1
            elif fast:
                rows = user_ids.unsqueeze(1)
                cache = [(kk[rows, origin], vv[rows, origin]) for kk, vv in cache]  # follow the surviving beams
                hid, cache = self.t5.decode_step(step_emb, j + 1, cross, mask0, cache)
            else:
                beam_rows = (user_ids.unsqueeze(1) * nb_prev + origin).reshape(-1)
                if width != expanded_width:
                    users = user_ids.repeat_interleave(width)
                    enc_b, mask_b = enc0[users], mask0[users]
                if cache is not None:
                    # Self-attention keys/values follow the surviving beams. The cross-attention keys/values are
                    # the same for every beam of a user, so reordering them within a user is the identity: they
                    # are only re-laid out (from any one beam row of each user) when the beam width changes.
                    cache.self_attention_cache.reorder_cache(beam_rows)
                    if width != expanded_width:
                        cache.cross_attention_cache.reorder_cache(users * nb_prev)
                    hid, cache = self.decode(step_emb.reshape(b * width, 1, -1), enc_b, mask_b, cache)
                else:
                    flat_seqs = seqs.reshape(b * width, -1)
                    emb = torch.stack([self.code_emb[i](flat_seqs[:, i]) for i in range(j + 1)], 1)
                    dec_in = torch.cat([self.bos.expand(b * width, 1, -1), emb], 1)
                    hid, _ = self.decode(dec_in, enc_b, mask_b)
                hid = hid[:, -1].view(b, width, -1)
            logp = F.log_softmax(self.position_logits(hid, j + 1).float(), dim=-1)
            nb_prev, expanded_width = width, width
        items = node if constrained else trie.lookup(seqs)
        valid = (items > 0) & torch.isfinite(scores)
        items = torch.where(valid, items, torch.full_like(items, -1))
        scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
        if scores.shape[1] < num_beams:
            pad = num_beams - scores.shape[1]
            items = F.pad(items, (0, pad), value=-1)
            scores = F.pad(scores, (0, pad), value=float("-inf"))
        return items, scores
