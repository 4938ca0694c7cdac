"""DIGER: semantic IDs trained jointly with the recommender through Gumbel straight-through
assignment with uncertainty decay (Fu et al., SIGIR 2026, arXiv 2601.19711; official code ``junchen-fu/DIGER``
``vq.py`` / ``trainer.py``, the true end-to-end path of its ``gradient-fix`` branch).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ..decay import ASSIGN_MODES, build_decay
from ..gumbel import ConstantSchedule, make_schedule
from .genrec import take_rows
from .tiger import SemanticIDRecommender, _cfg

GRADIENT_PATHS = ("true_e2e", "historical")
#: ``target_use``: how the soft assignment's use as the soft label of the target codes trains the codebooks:
#: ``full`` (the paper), ``stop_gradient`` (that use detached) or ``weight`` (its gradient times
#: ``target_use_weight``); ours, issue 17: the soft-label term pulls the codes the recommender already predicts
#: toward every target.
TARGET_USES = ("full", "stop_gradient", "weight")
#: ``lr_id_scale``: ``absolute`` (the paper) or ``latent_norm`` (:meth:`DIGER.codebook_lr`; ours).
LR_ID_SCALES = ("absolute", "latent_norm")


class DIGER(SemanticIDRecommender):
    """DIGER as a RecBole ``SequentialRecommender``.

    Every step tokenises the batch's items with the (frozen-encoder) RQ-VAE in ``assign_mode``
    (``frqud`` by default: Gumbel noise on over-used codes), and:

    * ``gradient_path: true_e2e`` (default; the authors' fix in the official ``gradient-fix`` branch): the recommender sees
      ``A = onehot(c_cached) - sg(P) + P`` for history inputs, decoder inputs and soft targets,
      so the recommendation loss reaches every codebook level through the soft assignment ``P``.
    * ``gradient_path: historical`` (paper parity): the recommender sees the cached integer SIDs;
      codebooks learn only from the reconstruction and VQ losses of the target items; SDUD's
      ``L_UD`` replaces the recommendation loss.

    Semantic IDs the recommender sees are refreshed after every epoch by the trainer
    (:meth:`refresh_semantic_ids`). ``calculate_loss`` returns ``(rec, recon, vq)``.

    Raises:
        ValueError: for an unknown ``gradient_path`` or ``assign_mode``, or ``gumbel_tau <= 0``.
    """

    config_chain = ("TIGER", "DIGER")

    @classmethod
    def check_config(cls, config) -> None:
        """:meth:`SemanticIDRecommender.check_config` plus DIGER's keys (``gradient_path``, ``assign_mode``,
        ``gumbel_tau``, the decay's ranges, ``noise_mult``)."""
        super().check_config(config)
        gradient_path = str(_cfg(config, "gradient_path"))
        if gradient_path not in GRADIENT_PATHS:
            raise ValueError(f"gradient_path must be one of {list(GRADIENT_PATHS)}, got {gradient_path!r}")
        assign_mode = str(_cfg(config, "assign_mode"))
        if assign_mode not in ASSIGN_MODES:
            raise ValueError(f"assign_mode must be one of {list(ASSIGN_MODES)}, got {assign_mode!r}")
        if not float(_cfg(config, "gumbel_tau")) > 0:
            raise ValueError(f"gumbel_tau must be > 0, got {_cfg(config, 'gumbel_tau')}")
        build_decay(assign_mode, 1, 2, config)  # range checks of rho, momentum, lambda, schedules
        if not float(_cfg(config, "noise_mult")) >= 0:
            raise ValueError(f"noise_mult must be >= 0, got {_cfg(config, 'noise_mult')}")
        target_use = str(_cfg(config, "target_use"))
        if target_use not in TARGET_USES:
            raise ValueError(f"target_use must be one of {list(TARGET_USES)}, got {target_use!r}")
        if target_use == "weight" and not float(_cfg(config, "target_use_weight")) >= 0:
            raise ValueError(f"target_use_weight must be >= 0, got {_cfg(config, 'target_use_weight')}")
        lr_id_scale = str(_cfg(config, "lr_id_scale"))
        if lr_id_scale not in LR_ID_SCALES:
            raise ValueError(f"lr_id_scale must be one of {list(LR_ID_SCALES)}, got {lr_id_scale!r}")
        if lr_id_scale == "latent_norm" and not float(_cfg(config, "lr_id_reference_norm")) > 0:
            raise ValueError(f"lr_id_reference_norm must be > 0, got {_cfg(config, 'lr_id_reference_norm')}")

    def __init__(self, config, dataset):
        gradient_path = str(_cfg(config, "gradient_path"))
        assign_mode = str(_cfg(config, "assign_mode"))
        tau = float(_cfg(config, "gumbel_tau"))
        noise_mult = float(_cfg(config, "noise_mult"))
        super().__init__(config, dataset)
        self.gradient_path, self.assign_mode, self.tau = gradient_path, assign_mode, tau
        # Temperature schedule (DIGER fixes tau; schedules are an option of ours): tau(t) from gumbel_tau_schedule.
        self.tau_schedule = make_schedule(self.tau if _cfg(config, "gumbel_tau_schedule") is None else _cfg(config, "gumbel_tau_schedule"))
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        source = str(_cfg(config, "logit_source"))
        if source == "auto":
            source = "sinkhorn_normalized" if self.gradient_path == "historical" else "raw"
        self.assign_kw = {"logit_source": source, "sk_epsilon": float(_cfg(config, "sk_epsilon")),
                          "sk_iters": int(_cfg(config, "sk_iters")), "noise_mult": noise_mult}
        self.w_balance = float(_cfg(config, "w_balance"))
        self.use_cached_forward = bool(_cfg(config, "use_cached_sinkhorn_forward"))
        self.target_use = str(_cfg(config, "target_use"))
        self.target_use_weight = float(_cfg(config, "target_use_weight"))
        self.w_recon = float(_cfg(config, "w_recon"))
        self.w_vq = float(_cfg(config, "w_vq"))
        self.decay = build_decay(self.assign_mode, self.code_levels, self.code_num, config)
        # Only the codebooks (and sigma) learn on the tokenizer side (official DIGER ``trainer.py``, stage 1).
        self.tokenizer.encoder.requires_grad_(False)
        self.tokenizer.decoder.requires_grad_(False)
        self._z_cache = None
        self._z_version = -1

    # ----- optimisation -----------------------------------------------------------------------
    joint_training = True

    def codebook_lr(self, config) -> float:
        """The codebooks' learning rate: ``lr_id`` (``lr_id_scale: absolute``, the paper), or ``lr_id`` times the
        mean latent norm ``mean ||Enc(x)||`` over ``lr_id_reference_norm`` (``latent_norm``; ours): AdamW's step is
        absolute, so the same ``lr_id`` moves small latents (MiniLM, norm ~0.35) relatively far more than large ones
        (a LLaMA-architecture embedding as in LETTER, norm ~9, the default reference); scaling keeps the relative
        step, so the paper's ``lr_id`` transfers across embedding models."""
        lr = float(_cfg(config, "lr_id"))
        if str(_cfg(config, "lr_id_scale")) == "latent_norm":
            lr *= float(self._latents().norm(dim=-1)[1:].mean()) / float(_cfg(config, "lr_id_reference_norm"))
        return lr

    def param_groups(self, config) -> List[Dict]:
        """AdamW groups: recommender (``learning_rate``), codebooks (:meth:`codebook_lr`), sigma (``lr_sigma``)."""
        wd = float(_cfg(config, "weight_decay"))
        groups = super().param_groups(config) + [
            {"params": [p for p in self.tokenizer.quantizers.parameters() if p.requires_grad],
             "lr": self.codebook_lr(config), "weight_decay": wd, "name": "codebooks"},
        ]
        sig = [p for p in self.decay.parameters() if p.requires_grad]
        if sig:
            groups.append({"params": sig, "lr": float(_cfg(config, "lr_sigma")), "weight_decay": wd, "name": "sigma"})
        return groups

    def on_step_end(self) -> None:
        self.decay.step()
        self.train_step += 1

    def current_tau(self) -> float:
        return self.tau_schedule.value(int(self.train_step)) if not isinstance(self.tau_schedule, ConstantSchedule) else self.tau

    def step_metrics(self) -> Dict[str, float]:
        return self.decay.metrics()

    def decay_state(self) -> List[torch.Tensor]:
        return list(self.decay.state_dict().values())

    # ----- loss -------------------------------------------------------------------------------
    def _latents(self) -> torch.Tensor:
        """``z = Enc(x)`` of every item, computed once: encoder and item embeddings are frozen (official DIGER ``trainer.py``)."""
        if self._z_cache is None or self._z_version != self._table_version:
            with torch.no_grad():
                self._z_cache = self.tokenizer.encoder(self.item_emb)
            self._z_version = self._table_version
        return self._z_cache

    def _tokenize(self, items: torch.Tensor):
        z = self._latents()[items]
        levels, z_hat = self.tokenizer.quantize(z, mode=self.assign_mode, tau=self.current_tau(), decay=self.decay,
                                                **self.assign_kw)
        return z, levels, z_hat

    def _balance_loss(self, levels) -> torch.Tensor:
        """``mean_l sum_k |mean_b p_soft[b, k] - 1/K|`` (the official trainer's balance loss, ``trainer.py``)."""
        k = self.code_num
        return torch.stack([(lv.p_soft.mean(0) - 1.0 / k).abs().sum() for lv in levels]).mean()

    def calculate_loss(self, interaction):
        """``(rec, w_recon * recon, w_vq * vq[, w_balance * balance])`` of the batch (official DIGER ``trainer.py``; ``gradient-fix`` branch for ``true_e2e``)."""
        return self.loss_terms(interaction)

    def loss_terms(self, interaction, detach_uses: frozenset = frozenset()):
        """:meth:`calculate_loss` with the option to cut the gradient of single uses of the soft assignment.

        ``detach_uses`` (``true_e2e`` only) holds any of ``"history"``, ``"decoder"``, ``"target"``: those uses
        see the assignment detached, so a test can check that each use alone reaches every codebook level
        (as the official ``gradient-fix`` branch's ``tests/test_true_e2e_gradients.py`` does). Training uses the
        empty set.
        """
        item_seq = interaction[self.ITEM_SEQ]
        target = interaction[self.POS_ITEM_ID]
        if self.gradient_path == "historical":
            return self._historical_loss(interaction, target)
        if self.backbone == "decoder" and self.decoder_train == "sequence":
            return self._sequence_loss_terms(interaction, detach_uses)
        b, h = item_seq.shape
        ids = torch.cat([item_seq.reshape(-1), target])
        uniq, inv = torch.unique(ids, return_inverse=True)
        inv_h, inv_t = inv[: b * h].view(b, h), inv[b * h:]
        with torch.autocast(device_type=item_seq.device.type, enabled=False):  # code assignment stays fp32 under amp
            z, levels, z_hat = self._tokenize(uniq)
        big_l = self.code_levels
        a = self._assignment(uniq, levels)
        tok = self._item_tokens(a, uniq)
        detach = detach_uses
        tok_det = self._item_tokens(a.detach(), uniq) if detach else tok
        hist_mask = item_seq > 0
        hist_src = tok_det if "history" in detach else tok
        hist_tok = torch.where(hist_mask[..., None, None], take_rows(hist_src, inv_h), self.genrec.pad.to(tok.dtype))
        enc_emb, enc_mask = self.genrec.encoder_inputs(hist_tok, hist_mask)
        dec = self.genrec.decoder_inputs(take_rows(tok_det if "decoder" in detach else tok, inv_t))
        logits = self.genrec(enc_emb, enc_mask, dec)
        a_t = take_rows(self._target_labels(a, detach), inv_t)
        sem = torch.stack([-(a_t[:, l] * F.log_softmax(logits[l].float(), -1)).sum(-1).mean() for l in range(big_l)]).sum()
        suf = F.cross_entropy(logits[big_l], self.sid_table[target, big_l])
        rec = (sem + suf) / (big_l + 1)
        self.decay.loss(rec)  # logs target sigma; true_e2e never rescales the recommendation loss
        zt, zht = take_rows(z, inv_t), take_rows(z_hat, inv_t)
        recon = F.mse_loss(zht, zt)
        vq = torch.stack([take_rows(lv.vq_loss, inv_t).mean() for lv in levels]).mean()
        if self.w_balance > 0:
            return rec, self.w_recon * recon, self.w_vq * vq, self.w_balance * self._balance_loss(levels)
        return rec, self.w_recon * recon, self.w_vq * vq

    def _assignment(self, uniq: torch.Tensor, levels) -> torch.Tensor:
        """``[U, L, K]`` soft assignment of the items ``uniq`` that the recommender consumes: the cached Sinkhorn
        codes one-hot in the forward pass with the soft assignment's gradient (``use_cached_sinkhorn_forward``),
        else the straight-through assignment of the mode."""
        if self.use_cached_forward:
            cached = self.sid_table[uniq, :self.code_levels].clamp_min(0)
            p = torch.stack([lv.p_soft for lv in levels], 1)
            return F.one_hot(cached, self.code_num).to(p.dtype) - p.detach() + p
        return torch.stack([lv.y_st for lv in levels], 1)

    def _target_labels(self, a: torch.Tensor, detach_uses) -> torch.Tensor:
        """The assignment as the targets' soft labels: detached (``target_use: stop_gradient`` or a test's
        ``detach_uses``), its gradient scaled by ``target_use_weight`` (``weight``; same values), or as is."""
        if "target" in detach_uses or self.target_use == "stop_gradient":
            return a.detach()
        if self.target_use == "weight":
            return a.detach() + self.target_use_weight * (a - a.detach())
        return a

    def _sequence_loss_terms(self, interaction, detach_uses: frozenset):
        """``true_e2e`` with ``backbone: decoder`` and ``decoder_train: sequence``: the window rows' history plus
        target in one causal pass; every item's tokens are its soft-assignment mixtures (the ``history`` /
        ``decoder`` uses: inputs), every item from the second on is a soft-label target (``target`` use), the
        suffix a hard one; reconstruction and VQ losses over the predicted items."""
        seq = self._window_sequences(interaction)
        if seq is None:  # no window in this batch: zero losses that still have a graph
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return (zero, zero, zero, zero) if self.w_balance > 0 else (zero, zero, zero)
        real = seq > 0
        uniq, inv = torch.unique(seq[real], return_inverse=True)
        with torch.autocast(device_type=seq.device.type, enabled=False):
            z, levels, z_hat = self._tokenize(uniq)
        big_l = self.code_levels
        a = self._assignment(uniq, levels)
        inputs_detached = {"history", "decoder"} <= set(detach_uses)  # both input uses cut: only the target's left
        tok = self._item_tokens(a.detach() if inputs_detached else a, uniq)  # [U, C, d]
        b, t = seq.shape
        seq_tok = self.genrec.pad.to(tok.dtype).expand(b, t, tok.shape[1], -1).clone()
        seq_tok[real] = take_rows(tok, inv)
        logits = self.genrec.sequence_logits(seq_tok, real)  # C tensors [B, T, K_j]
        pred = real & (torch.arange(t, device=seq.device) > 0)  # items 1..len are predicted
        inv_pred = torch.full_like(seq, -1)
        inv_pred[real] = inv
        ip = inv_pred[pred]
        a_t = take_rows(self._target_labels(a, detach_uses), ip)
        sem = torch.stack([-(a_t[:, l] * F.log_softmax(logits[l][pred].float(), -1)).sum(-1).mean()
                           for l in range(big_l)]).sum()
        suf = F.cross_entropy(logits[big_l][pred], self.sid_table[seq[pred], big_l])
        rec = (sem + suf) / (big_l + 1)
        self.decay.loss(rec)
        recon = F.mse_loss(take_rows(z_hat, ip), take_rows(z, ip))
        vq = torch.stack([take_rows(lv.vq_loss, ip).mean() for lv in levels]).mean()
        if self.w_balance > 0:
            return rec, self.w_recon * recon, self.w_vq * vq, self.w_balance * self._balance_loss(levels)
        return rec, self.w_recon * recon, self.w_vq * vq

    def _item_tokens(self, a: torch.Tensor, uniq: torch.Tensor) -> torch.Tensor:
        """``[U, C, d]`` token embeddings: level ``l`` is the mixture ``A[:, l] @ E_l``, the suffix is hard."""
        emb = self.genrec.code_emb
        mix = torch.stack([a[:, l] @ emb[l].weight for l in range(self.code_levels)], 1)
        suffix = emb[self.code_levels](self.sid_table[uniq, self.code_levels].clamp_min(0)).unsqueeze(1)
        return torch.cat([mix, suffix], 1)

    def _historical_loss(self, interaction, target):
        rec = super().calculate_loss(interaction)
        with torch.autocast(device_type=target.device.type, enabled=False):
            z, levels, z_hat = self._tokenize(target)
        recon = F.mse_loss(z_hat, z)
        vq = torch.stack([lv.vq_loss.mean() for lv in levels]).mean()
        ud = self.decay.loss(rec)
        if self.w_balance > 0:
            return (ud if ud is not None else rec), self.w_recon * recon, self.w_vq * vq, \
                self.w_balance * self._balance_loss(levels)
        return (ud if ud is not None else rec), self.w_recon * recon, self.w_vq * vq
