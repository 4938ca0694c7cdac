"""TIGER: a T5 generative recommender over fixed semantic IDs, as a RecBole ``SequentialRecommender``.

Stage 0 runs before the model is built (:func:`diger.artifact.resolve_stage0`; TIGER, Rajput et al., NeurIPS
2023, arXiv 2305.05065; stage 0 of the official DIGER trainer, ``junchen-fu/DIGER`` ``scripts/rqvae/``): item text
embeddings (:mod:`diger.text`) -> RQ-VAE pre-training with FAISS k-means init (:mod:`diger.tokenizer`) ->
SID table with collision suffix; the constructor only loads its result. TIGER keeps the tokenizer frozen; :class:`diger.models.DIGER`
trains its codebooks jointly. The SID table, the item embeddings and the tokenizer are buffers and
parameters of the model, so a checkpoint's ``state_dict`` carries the exact table it was evaluated
with, and nothing is recomputed at load time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .. import compat  # noqa: F401  (RecBole shims before RecBole imports)
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from ..artifact import model_stage0, resolve_stage0, save_artifact
from ..tokenizer import RQTokenizer, build_sid_table, codebook_stats
from .fast_t5 import DROPOUT_IMPLS
from .genrec import BACKBONES, GenRec

#: ``decoder_train`` (``backbone: decoder``): ``sequence`` (every next item of a window in one pass) or
#: ``target`` (the T5 protocol: each training row's target only).
DECODER_TRAIN = ("sequence", "target")
from .trie import SIDTrie

logger = logging.getLogger(__name__)


def _cfg(config, key):
    """``config[key]`` of a TIGER / DIGER key. Its default lives only in ``diger/properties/model/<Model>.yaml``
    (loaded by :class:`diger.config.DigerConfig`), never in Python.

    Raises:
        ValueError: for a key the config does not carry (a config built without our property files).
    """
    if key not in config:
        raise ValueError(f"config key {key!r} is not set: TIGER / DIGER defaults live in diger/properties/model/"
                         f"*.yaml; build the config with diger.quick_start.make_config, or add those files to "
                         f"RecBole's config_file_list")
    return config[key]


def _optional(config, key):
    """``config[key]``, or ``None`` for a runner key no YAML carries (``sid_table_file``, ``sid_artifact``)."""
    return config[key] if key in config else None


class SemanticIDRecommender(SequentialRecommender):
    """Shared base of TIGER and DIGER: tokenizer, SID table, T5 backbone, constrained beam search.

    Config keys (defaults in ``diger/properties/model/<Model>.yaml``): ``text_fields``,
    ``text_model``, ``encoder_layers``, ``e_dim``, ``code_levels``, ``code_num``, ``suffix_size``,
    ``vq_beta``, ``rqvae_*`` (pre-training), ``kmeans_init``, ``sk_epsilon``, ``sk_iters``, T5 sizes
    (``t5_layers``, ``t5_decoder_layers``, ``d_model``, ``d_ff``, ``num_heads``, ``d_kv``,
    ``dropout``), ``backbone`` (``fast`` | ``hf_t5`` | ``decoder``, :data:`diger.models.genrec.BACKBONES`),
    ``decoder_train`` and ``decoder_layers`` (``backbone: decoder``), ``dropout_impl`` (``torch`` | ``bits``), ``num_beams``, ``constrained_decoding``, ``topk``.

    Raises:
        ValueError: ``num_beams < max(topk)``, ``code_num < 2`` or a bad ``code_levels``.
    """

    type = SequentialRecommender.type
    input_type = InputType.POINTWISE
    #: YAML defaults loaded in order from ``diger/properties/model/<name>.yaml`` and
    #: ``diger/properties/dataset/<dataset>-<name>.yaml`` (see :class:`diger.config.DigerConfig`).
    config_chain = ("TIGER",)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse bad model keys before stage 0 runs (pre-training can take minutes); ``diger run`` calls it first.

        Raises:
            ValueError: ``code_num < 2``, ``code_levels < 1``, ``suffix_size < 1``, ``num_beams < max(topk)`` or an
            unknown ``backbone``.
        """
        code_num, levels = int(_cfg(config, "code_num")), int(_cfg(config, "code_levels"))
        suffix, beams = int(_cfg(config, "suffix_size")), int(_cfg(config, "num_beams"))
        topk = _cfg(config, "topk")
        topk = [topk] if isinstance(topk, int) else list(topk)
        if code_num < 2:
            raise ValueError(f"code_num (codebook size) must be >= 2, got {code_num}")
        if levels < 1:
            raise ValueError(f"code_levels must be >= 1, got {levels}")
        if suffix < 1:
            raise ValueError(f"suffix_size must be >= 1, got {suffix}")
        if beams < max(topk):
            raise ValueError(f"num_beams ({beams}) must be >= max(topk) ({max(topk)})")
        backbone = str(_cfg(config, "backbone"))
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        impl = str(_cfg(config, "dropout_impl"))
        if impl not in DROPOUT_IMPLS:
            raise ValueError(f"dropout_impl must be one of {DROPOUT_IMPLS}, got {impl!r}")
        if impl != "torch" and backbone != "fast":
            raise ValueError(f"dropout_impl: {impl} needs backbone: fast, got backbone: {backbone}")
        from ..artifact import stage0_seed

        stage0_seed(config)  # a bad sid_seed fails here, before any data or embedding work
        mode = str(_cfg(config, "decoder_train"))
        if mode not in DECODER_TRAIN:
            raise ValueError(f"decoder_train must be one of {DECODER_TRAIN}, got {mode!r}")
        depth = _cfg(config, "decoder_layers")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"decoder_layers must be an integer >= 1 or ~ (t5_layers + t5_decoder_layers), "
                             f"got {depth!r}")
        if depth is not None and backbone != "decoder":
            raise ValueError(f"decoder_layers: {depth} needs backbone: decoder, got backbone: {backbone} "
                             f"(the T5 depths are t5_layers and t5_decoder_layers)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.config = config
        self.code_levels = int(_cfg(config, "code_levels"))
        self.code_num = int(_cfg(config, "code_num"))
        self.suffix_size = int(_cfg(config, "suffix_size"))
        self.num_beams = int(_cfg(config, "num_beams"))
        self.constrained = bool(_cfg(config, "constrained_decoding"))
        self.beam_cache = bool(_cfg(config, "beam_search_cache"))
        self.backbone = str(_cfg(config, "backbone"))
        self.decoder_train = str(_cfg(config, "decoder_train"))
        self.num_codes = [self.code_num] * self.code_levels
        self.vocab_sizes = self.num_codes + [self.suffix_size]

        self._trie: Optional[SIDTrie] = None
        self._trie_version = -1
        self._table_version = 0
        self.dataset_item_tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]]
        # Stage 0 (item embeddings -> tokenizer -> SID table) is resolved outside: this constructor only loads it.
        art = resolve_stage0(config, dataset)
        if art.published and self.joint_training:
            raise ValueError(f"{art.folder}: published semantic IDs (sid_table_file, no tokenizer) are for TIGER; "
                             f"DIGER learns its own codebooks")
        emb, table = art.aligned(list(self.dataset_item_tokens))
        self.register_buffer("item_emb", emb.float())
        self.tokenizer = RQTokenizer(emb.shape[1], list(_cfg(config, "encoder_layers")),
                                     int(_cfg(config, "e_dim")), self.num_codes, float(_cfg(config, "vq_beta")),
                                     kind=str(_cfg(config, "tokenizer")))
        if not art.published:
            self.tokenizer.load_state_dict(art.tokenizer_state)
        self.register_buffer("sid_table", table)
        self._table_version += 1
        self.pretrain_info: Dict = dict(art.meta.get("pretrain_info") or {})
        if self.backbone == "decoder" and self.decoder_train == "sequence":
            self._mark_window_ends(dataset)
        self.genrec = GenRec(
            self.vocab_sizes,
            d_model=int(_cfg(config, "d_model")), d_ff=int(_cfg(config, "d_ff")),
            num_heads=int(_cfg(config, "num_heads")), d_kv=int(_cfg(config, "d_kv")),
            num_layers=int(_cfg(config, "t5_layers")),
            num_decoder_layers=int(_cfg(config, "t5_decoder_layers")),
            dropout=float(_cfg(config, "dropout")),
            backbone=self.backbone, dropout_impl=str(_cfg(config, "dropout_impl")),
            decoder_layers=_cfg(config, "decoder_layers"),
        )

    #: Multi-process training (diger.compat, DistributedDataParallel): the SID table, item embeddings and
    #: FrqUD usage are kept identical on every rank by this package (tokenizer init on rank 0 and
    #: broadcast, deterministic SID refresh, all-reduced code counts), so DDP need not broadcast buffers
    #: every step. Unused parameters are allowed: T5's shared embedding is never used (inputs are embedded
    #: codes), and SDUD's sigma gets no gradient in a batch without noisy assignments.
    ddp_broadcast_buffers = False
    ddp_find_unused_parameters = True

    def forward(self, interaction):
        """The training losses of ``interaction`` (:meth:`calculate_loss`), so ``DistributedDataParallel`` can wrap a step."""
        return self.calculate_loss(interaction)

    # ----- tokenizer and SID table ------------------------------------------------------------
    def save_sid_artifact(self, folder) -> Path:
        """Write this model's stage 0 (item embeddings, tokenizer, SID table) as an artifact (:mod:`diger.artifact`)."""
        return save_artifact(folder, **model_stage0(self))

    @torch.no_grad()
    def compute_semantic_ids(self) -> torch.Tensor:
        """``[n_items, L+1]`` SID table from the current tokenizer (Sinkhorn per level, collision suffix)."""
        prefix = self.tokenizer.get_codes(
            self.item_emb[1:], sinkhorn=bool(_cfg(self.config, "sid_sinkhorn")),
            sk_epsilon=float(_cfg(self.config, "sk_epsilon")), sk_iters=int(_cfg(self.config, "sk_iters")))
        return build_sid_table(prefix, self.suffix_size)

    @torch.no_grad()
    def refresh_semantic_ids(self) -> Dict:
        """Recompute and store the SID table; return codebook statistics (incl. changed share)."""
        previous = self.sid_table[1:].clone() if (self.sid_table[1:] >= 0).all() else None
        table = self.compute_semantic_ids().to(self.sid_table.device)
        self.sid_table.copy_(table)
        self._table_version += 1
        stats = codebook_stats(table[1:].cpu(), self.num_codes, previous.cpu() if previous is not None else None)
        return self._add_nearest_usage(stats)

    def codebook_statistics(self) -> Dict:
        return self._add_nearest_usage(codebook_stats(self.sid_table[1:].cpu(), self.num_codes))

    @torch.no_grad()
    def _add_nearest_usage(self, stats: Dict) -> Dict:
        """Add ``nearest_used`` (codes used per level by argmin-distance assignment) when the table is Sinkhorn's.

        Sinkhorn rebalances the table and so hides collapse; nearest-code usage shows the codebooks' own health.
        """
        if bool(_cfg(self.config, "sid_sinkhorn")) and not _optional(self.config, "sid_table_file"):
            nearest = self.tokenizer.get_codes(self.item_emb[1:], sinkhorn=False).cpu()
            stats["nearest_used"] = [int(torch.unique(nearest[:, l]).numel()) for l in range(nearest.shape[1])]
        return stats

    @property
    def trie(self) -> SIDTrie:
        if self._trie is None or self._trie_version != self._table_version:
            self._trie = SIDTrie(self.sid_table, self.vocab_sizes).to(self.sid_table.device)
            self._trie_version = self._table_version
        return self._trie

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.table_changed()  # the SID table may have changed: rebuild the trie
        return out

    # ----- the trainer-model contract (diger.trainer.GenRecTrainer calls exactly these) -------------
    #: ``True``: the codebooks train with the recommender, and the trainer calls :meth:`refresh_semantic_ids`
    #: after every epoch (DIGER); ``False``: semantic IDs are fixed after stage 0 (TIGER).
    joint_training = False

    def param_groups(self, config) -> List[Dict]:
        """AdamW groups (decoupled weight decay; official DIGER ``trainer.py``): the T5 recommender at ``learning_rate``."""
        wd = float(_cfg(config, "weight_decay"))
        return [{"params": [p for p in self.genrec.parameters() if p.requires_grad],
                 "lr": float(config["learning_rate"]), "weight_decay": wd, "name": "recommender"}]

    def on_step_end(self) -> None:
        """Called after every optimiser step (DIGER advances its noise decay and step counter)."""

    def step_metrics(self) -> Dict[str, torch.Tensor]:
        """Per-step scalars (0-d tensors) the trainer averages over the epoch and logs; none by default."""
        return {}

    def decay_state(self) -> List[torch.Tensor]:
        """Tensors of the uncertainty-decay state that must agree across ranks (DIGER); none by default."""
        return []

    def table_changed(self) -> None:
        """Tell the model its ``sid_table`` was replaced or edited from outside (the trie is rebuilt)."""
        self._table_version += 1

    # ----- recommender ------------------------------------------------------------------------
    def history_codes(self, item_seq: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` item ids -> ``[B, H, C]`` codes (``-1`` for padding)."""
        return self.sid_table[item_seq]

    def encoder_embeddings(self, item_seq: torch.Tensor):
        emb = self.genrec.embed_codes(self.history_codes(item_seq))
        return self.genrec.encoder_inputs(emb, item_seq > 0)

    def calculate_loss(self, interaction):
        """Mean cross-entropy over the ``C`` code positions of the target item (teacher forcing); with
        ``backbone: decoder`` and ``decoder_train: sequence``, over every next item of the row's window
        (:meth:`_sequence_loss`)."""
        if self.backbone == "decoder" and self.decoder_train == "sequence" and not self.joint_training:
            return self._sequence_loss(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        target = self.sid_table[interaction[self.POS_ITEM_ID]]
        enc_emb, enc_mask = self.encoder_embeddings(item_seq)
        dec = self.genrec.decoder_inputs(self.genrec.embed_codes(target))
        logits = self.genrec(enc_emb, enc_mask, dec)
        return torch.stack([F.cross_entropy(lg, target[:, j]) for j, lg in enumerate(logits)]).mean()

    WINDOW_END = "window_end"

    def _mark_window_ends(self, dataset) -> None:
        """Flag the training rows whose windows tile each user's sequence (``decoder_train: sequence``).

        RecBole's training rows are the prefixes of each user's sequence in time order (row ``r`` has target
        ``t = r + 1`` and the last ``W = MAX_ITEM_LIST_LENGTH`` items before it). The rows with
        ``(R - 1 - r) % W == 0`` (``R`` rows of that user) hold windows whose items ``1..`` cover every training
        target exactly once; their targets and contexts are training items only (the validation and test items
        are not in the training rows). The flag travels with the rows as the field ``window_end``.
        """
        inter = dataset.inter_feat
        if inter is None or self.WINDOW_END in inter.interaction or self.ITEM_SEQ not in inter.interaction:
            return
        uid = inter[dataset.uid_field]
        new_user = torch.ones(uid.shape[0], dtype=torch.bool)
        new_user[1:] = uid[1:] != uid[:-1]
        group = new_user.long().cumsum(0) - 1  # rows of one user are contiguous, in time order
        rank = torch.arange(uid.shape[0]) - new_user.nonzero().flatten()[group]
        count = torch.bincount(group)[group]
        inter.interaction[self.WINDOW_END] = (count - 1 - rank) % int(self.max_seq_length) == 0

    def _window_sequences(self, interaction):
        """``[B', T]`` item ids of the batch's window rows (:meth:`_mark_window_ends`): each row's history with
        its target appended after the last real item (padding after it); ``None`` when the batch has none. Every
        row is used when the field is absent."""
        item_seq = interaction[self.ITEM_SEQ]
        keep = interaction[self.WINDOW_END].bool() if self.WINDOW_END in interaction.interaction else \
            torch.ones(item_seq.shape[0], dtype=torch.bool, device=item_seq.device)
        if not bool(keep.any()):
            return None
        seq = torch.cat([item_seq[keep], torch.zeros_like(item_seq[keep][:, :1])], 1)
        seq.scatter_(1, interaction[self.ITEM_SEQ_LEN][keep][:, None], interaction[self.POS_ITEM_ID][keep][:, None])
        return seq

    def _sequence_loss(self, interaction):
        """Mean code cross-entropy over every next item of the batch's window rows, in one causal pass each:
        the row's history plus its target, items ``1..len`` predicted from the items before them (rows that do
        not end a window carry nothing)."""
        seq = self._window_sequences(interaction)
        if seq is None:  # no window in this batch: a zero loss that still has a graph
            return sum(p.sum() for p in self.genrec.parameters()) * 0.0
        codes = self.sid_table[seq]  # [B, T, C]
        logits = self.genrec.sequence_logits(self.genrec.embed_codes(codes), seq > 0)
        target = (seq > 0) & (torch.arange(seq.shape[1], device=seq.device) > 0)  # items 1..len
        return torch.stack([F.cross_entropy(lg[target], codes[..., j][target]) for j, lg in enumerate(logits)]).mean()

    def predict(self, interaction):
        raise NotImplementedError("TIGER/DIGER score items by beam search; use full-ranking evaluation (mode: full)")

    @torch.no_grad()
    def beam_search(self, interaction):
        """``(items [B, num_beams], scores [B, num_beams])`` for the batch's histories."""
        enc_emb, enc_mask = self.encoder_embeddings(interaction[self.ITEM_SEQ])
        return self.genrec.beam_search(enc_emb, enc_mask, self.trie, self.num_beams,
                                       constrained=self.constrained, use_cache=self.beam_cache)

    @torch.no_grad()
    def full_sort_predict(self, interaction):
        """Dense ``[B, n_items]`` scores: beam log-probabilities at the generated items, ``-inf`` elsewhere."""
        items, scores = self.beam_search(interaction)
        out = torch.full((items.shape[0], self.n_items), float("-inf"), device=scores.device)
        valid = items > 0
        rows = torch.arange(items.shape[0], device=items.device).unsqueeze(1).expand_as(items)
        out[rows[valid], items[valid]] = scores[valid]
        return out


class TIGER(SemanticIDRecommender):
    """TIGER (Rajput et al., NeurIPS 2023): semantic IDs fixed after RQ-VAE pre-training (arXiv 2305.05065)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.tokenizer.requires_grad_(False)

    def refresh_semantic_ids(self):
        """TIGER's semantic IDs are fixed after stage 0 (the tokenizer is frozen): statistics only."""
        return self.codebook_statistics()
