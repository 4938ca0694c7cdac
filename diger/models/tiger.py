"""TIGER: a T5 generative recommender over fixed semantic IDs, as a RecBole ``SequentialRecommender``.

Pipeline inside ``__init__`` (DIGER-method.md §9 stage 0; §12 TIGER): item text embeddings
(:mod:`diger.text`) -> RQ-VAE pre-training with FAISS k-means init (:mod:`diger.tokenizer`) ->
SID table with collision suffix. TIGER keeps the tokenizer frozen; :class:`diger.models.DIGER`
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

from .. import distributed as ddist
from ..artifact import (ArtifactError, cache_folder, content_hashes, load_artifact, model_stage0, save_artifact,
                        sid_settings)
from ..text import item_text_embeddings
from ..tokenizer import RQTokenizer, build_sid_table, codebook_stats, pretrain_tokenizer
from .genrec import BACKBONES, GenRec
from .trie import SIDTrie

logger = logging.getLogger(__name__)


def _cfg(config, key, default):
    v = config[key] if key in config else None
    return default if v is None else v


class SemanticIDRecommender(SequentialRecommender):
    """Shared base of TIGER and DIGER: tokenizer, SID table, T5 backbone, constrained beam search.

    Config keys (defaults in ``diger/properties/model/<Model>.yaml``): ``text_fields``,
    ``text_model``, ``encoder_layers``, ``e_dim``, ``code_levels``, ``code_num``, ``suffix_size``,
    ``vq_beta``, ``rqvae_*`` (pre-training), ``kmeans_init``, ``sk_epsilon``, ``sk_iters``, T5 sizes
    (``t5_layers``, ``t5_decoder_layers``, ``d_model``, ``d_ff``, ``num_heads``, ``d_kv``,
    ``dropout``), ``backbone`` (``fast`` | ``hf_t5``, :data:`diger.models.genrec.BACKBONES`), ``num_beams``, ``constrained_decoding``, ``topk``.

    Raises:
        ValueError: ``num_beams < max(topk)``, ``code_num < 2`` or a bad ``code_levels``.
    """

    type = SequentialRecommender.type
    input_type = InputType.POINTWISE
    #: YAML defaults loaded in order from ``diger/properties/model/<name>.yaml`` and
    #: ``diger/properties/dataset/<dataset>-<name>.yaml`` (see :class:`diger.config.DigerConfig`).
    config_chain = ("TIGER",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.code_levels = int(_cfg(config, "code_levels", 3))
        self.code_num = int(_cfg(config, "code_num", 256))
        self.suffix_size = int(_cfg(config, "suffix_size", self.code_num))
        self.num_beams = int(_cfg(config, "num_beams", 20))
        self.constrained = bool(_cfg(config, "constrained_decoding", True))
        self.beam_cache = bool(_cfg(config, "beam_search_cache", True))
        topk = _cfg(config, "topk", [10])
        topk = [topk] if isinstance(topk, int) else list(topk)
        if self.code_num < 2:
            raise ValueError(f"code_num (codebook size) must be >= 2, got {self.code_num}")
        if self.code_levels < 1:
            raise ValueError(f"code_levels must be >= 1, got {self.code_levels}")
        if self.suffix_size < 1:
            raise ValueError(f"suffix_size must be >= 1, got {self.suffix_size}")
        if self.num_beams < max(topk):
            raise ValueError(f"num_beams ({self.num_beams}) must be >= max(topk) ({max(topk)})")
        self.backbone = str(_cfg(config, "backbone", "fast"))
        if self.backbone not in BACKBONES:  # before tokenizer pre-training, which can take minutes
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        self.num_codes = [self.code_num] * self.code_levels
        self.vocab_sizes = self.num_codes + [self.suffix_size]

        self._trie: Optional[SIDTrie] = None
        self._trie_version = -1
        self._table_version = 0
        self.dataset_item_tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]]
        restoring = bool(_cfg(config, "restore_from_checkpoint", False))
        self._artifact = None  # a loaded SemanticIDArtifact: stage 0 is read, not recomputed
        self._artifact_target: Optional[str] = None  # sid_artifact: auto, not cached yet: save stage 0 there
        art = None if restoring else _cfg(config, "sid_artifact", None)
        if art is not None and str(art) != "auto":
            self._artifact = load_artifact(art)
            self._artifact.check_fits(config)
            emb, self._artifact_table = self._artifact.aligned(list(self.dataset_item_tokens))
            config["item_emb_dim"] = int(emb.shape[1])
        elif _cfg(config, "sid_table_file", None) and not restoring:
            emb = torch.zeros(self.n_items, 1)  # published IDs: no item text needed
            config["item_emb_dim"] = 1
        elif restoring:
            dim = int(_cfg(config, "item_emb_dim", 0))
            if dim <= 0:
                raise ValueError("restore_from_checkpoint needs `item_emb_dim` in the saved config")
            emb = torch.zeros(self.n_items, dim)
        else:  # multi-process: rank 0 embeds the item texts (and fills the cache), the others receive them
            emb = ddist.broadcast_new_tensor(
                torch.from_numpy(item_text_embeddings(config, dataset)) if ddist.is_main() else None)
            config["item_emb_dim"] = int(emb.shape[1])
            if art is not None:  # auto: the cache folder is named by the hash of the stage-0 inputs
                self._auto_artifact(config, emb)
        self.register_buffer("item_emb", emb.float())
        self.tokenizer = RQTokenizer(emb.shape[1], list(_cfg(config, "encoder_layers", [256, 128])),
                                     int(_cfg(config, "e_dim", 64)), self.num_codes, float(_cfg(config, "vq_beta", 0.25)),
                                     kind=str(_cfg(config, "tokenizer", "rqvae")))
        self.register_buffer("sid_table", torch.full((self.n_items, self.code_levels + 1), -1, dtype=torch.long))
        self.pretrain_info: Dict = {}
        if not restoring:
            self._init_tokenizer(config)
        self.genrec = GenRec(
            self.vocab_sizes,
            d_model=int(_cfg(config, "d_model", 128)), d_ff=int(_cfg(config, "d_ff", 512)),
            num_heads=int(_cfg(config, "num_heads", 4)), d_kv=int(_cfg(config, "d_kv", 32)),
            num_layers=int(_cfg(config, "t5_layers", 2)),
            num_decoder_layers=int(_cfg(config, "t5_decoder_layers", _cfg(config, "t5_layers", 2))),
            dropout=float(_cfg(config, "dropout", 0.1)),
            backbone=self.backbone,
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
    def _init_tokenizer(self, config) -> None:
        """Tokenizer and SID table before training; under DDP computed once on rank 0 and broadcast
        (k-means init and RQ-VAE pre-training included), so every rank starts from identical codebooks."""
        if not ddist.is_distributed():
            return self._init_tokenizer_local(config)
        if ddist.is_main():
            self._init_tokenizer_local(config)
        ddist.broadcast_module_(self.tokenizer)
        ddist.broadcast_tensor_(self.sid_table)
        self.pretrain_info = ddist.broadcast_object(self.pretrain_info)
        self._table_version += 1

    def _auto_artifact(self, config, emb: torch.Tensor) -> None:
        """``sid_artifact: auto``: reuse ``$DIGER_CACHE/sid/<key>`` when it exists, else build it after stage 0."""
        key = content_hashes([str(t) for t in self.dataset_item_tokens[1:]], emb[1:].numpy(), sid_settings(config))["key"]
        folder = cache_folder(key)
        if (folder / "artifact.json").is_file():
            try:
                self._artifact = load_artifact(folder)
                self._artifact.check_fits(config)
                _, self._artifact_table = self._artifact.aligned(list(self.dataset_item_tokens))
                logger.info("sid_artifact auto: reusing %s (same item ids, embeddings and settings)", folder)
                return
            except ArtifactError as exc:
                logger.warning("sid_artifact auto: %s; pre-training again and replacing it", exc)
                self._artifact = None
        logger.info("sid_artifact auto: no artifact for key %s yet; pre-training and saving it to %s", key[:12], folder)
        self._artifact_target = str(folder)

    def save_sid_artifact(self, folder) -> Path:
        """Write this model's stage 0 (item embeddings, tokenizer, SID table) as an artifact (:mod:`diger.artifact`)."""
        return save_artifact(folder, **model_stage0(self))

    def _init_tokenizer_local(self, config) -> None:
        x = self.item_emb[1:]
        if self._artifact is not None:
            if self._artifact.published:
                if self.joint_training:
                    raise ValueError(f"sid_artifact {self._artifact.folder} holds published semantic IDs (no "
                                     f"tokenizer); they are for TIGER, DIGER learns its own codebooks")
            else:
                self.tokenizer.load_state_dict(self._artifact.tokenizer_state)
            self.sid_table.copy_(self._artifact_table)
            self._table_version += 1
            self.pretrain_info = {"sid_artifact": str(self._artifact.folder), **self._artifact.meta["pretrain_info"]}
            return
        if _cfg(config, "sid_table_file", None):
            return self._load_published_ids(config)
        path = _cfg(config, "rqvae_path", None)
        if path:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.tokenizer.load_state_dict(state.get("tokenizer", state))
            self.pretrain_info = {"loaded_from": str(path)}
        elif self.tokenizer.kind == "rqkmeans":
            # RQ-KMeans: the codebooks are the residual k-means centroids; nothing is trained.
            self.tokenizer.kmeans_init(x, niter=int(_cfg(config, "kmeans_iters", 20)), seed=int(_cfg(config, "seed", 2020)),
                                       backend=str(_cfg(config, "kmeans_init", "faiss")))
            self.pretrain_info = {"tokenizer": "rqkmeans"}
        else:
            self.pretrain_info = pretrain_tokenizer(
                self.tokenizer, x,
                epochs=int(_cfg(config, "rqvae_epochs", 500)), lr=float(_cfg(config, "rqvae_lr", 1e-3)),
                weight_decay=float(_cfg(config, "rqvae_weight_decay", 1e-4)),
                batch_size=int(_cfg(config, "rqvae_batch_size", 1024)),
                eval_every=int(_cfg(config, "rqvae_eval_every", 50)),
                kmeans=str(_cfg(config, "kmeans_init", "faiss")), kmeans_iters=int(_cfg(config, "kmeans_iters", 20)),
                seed=int(_cfg(config, "seed", 2020)), sinkhorn=bool(_cfg(config, "sid_sinkhorn", True)),
                sk_epsilon=float(_cfg(config, "sk_epsilon", 0.003)), sk_iters=int(_cfg(config, "sk_iters", 50)),
                show_progress=bool(_cfg(config, "show_progress", False)),
            )
        self.refresh_semantic_ids()
        if self._artifact_target:
            self.save_sid_artifact(self._artifact_target)
            self.pretrain_info = {**self.pretrain_info, "sid_artifact": self._artifact_target}

    def _load_published_ids(self, config) -> None:
        """Fixed semantic IDs from a published index (LETTER's ``*.index.json``) plus our collision suffix.

        Raises:
            ValueError: when the file's number of levels or code range disagrees with ``code_levels`` /
                ``code_num``, or for a model that trains its codebooks (DIGER).
        """
        from ..data.semantic_ids import load_letter_index

        path = _cfg(config, "sid_table_file", None)
        if self.joint_training:
            raise ValueError("sid_table_file (published semantic IDs) is for TIGER; DIGER learns its own codebooks")
        prefix = load_letter_index(path, list(self.dataset_item_tokens))[1:]
        if prefix.shape[1] != self.code_levels or int(prefix.max()) >= self.code_num or int(prefix.min()) < 0:
            raise ValueError(f"{path}: {prefix.shape[1]} levels with codes up to {int(prefix.max())}; "
                             f"set code_levels: {prefix.shape[1]} and code_num > {int(prefix.max())}")
        self.sid_table.copy_(build_sid_table(prefix, self.suffix_size))
        self._table_version += 1
        self.pretrain_info = {"sid_table_file": str(path)}

    @torch.no_grad()
    def compute_semantic_ids(self) -> torch.Tensor:
        """``[n_items, L+1]`` SID table from the current tokenizer (Sinkhorn per level, collision suffix)."""
        prefix = self.tokenizer.get_codes(
            self.item_emb[1:], sinkhorn=bool(_cfg(self.config, "sid_sinkhorn", True)),
            sk_epsilon=float(_cfg(self.config, "sk_epsilon", 0.003)), sk_iters=int(_cfg(self.config, "sk_iters", 50)))
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

        Sinkhorn rebalances the table and so hides collapse; nearest-code usage shows the codebooks (§11).
        """
        if bool(_cfg(self.config, "sid_sinkhorn", True)) and not _cfg(self.config, "sid_table_file", None):
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
        self._table_version += 1  # the SID table may have changed: rebuild the trie
        return out

    # ----- optimisation -----------------------------------------------------------------------
    joint_training = False

    def param_groups(self, config) -> List[Dict]:
        """AdamW groups (decoupled weight decay, DIGER-method.md §9): the T5 recommender at ``learning_rate``."""
        wd = float(_cfg(config, "weight_decay", 0.0))
        return [{"params": [p for p in self.genrec.parameters() if p.requires_grad],
                 "lr": float(config["learning_rate"]), "weight_decay": wd, "name": "recommender"}]

    # ----- recommender ------------------------------------------------------------------------
    def history_codes(self, item_seq: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` item ids -> ``[B, H, C]`` codes (``-1`` for padding)."""
        return self.sid_table[item_seq]

    def encoder_embeddings(self, item_seq: torch.Tensor):
        emb = self.genrec.embed_codes(self.history_codes(item_seq))
        return self.genrec.encoder_inputs(emb, item_seq > 0)

    def calculate_loss(self, interaction):
        """Mean cross-entropy over the ``C`` code positions of the target item (teacher forcing)."""
        item_seq = interaction[self.ITEM_SEQ]
        target = self.sid_table[interaction[self.POS_ITEM_ID]]
        enc_emb, enc_mask = self.encoder_embeddings(item_seq)
        dec = self.genrec.decoder_inputs(self.genrec.embed_codes(target))
        logits = self.genrec(enc_emb, enc_mask, dec)
        return torch.stack([F.cross_entropy(lg, target[:, j]) for j, lg in enumerate(logits)]).mean()

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
    """TIGER (Rajput et al., NeurIPS 2023): semantic IDs fixed after RQ-VAE pre-training (DIGER-method.md §12)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.tokenizer.requires_grad_(False)

    def refresh_semantic_ids(self):
        if _cfg(self.config, "sid_table_file", None) or self._artifact is not None:  # loaded IDs stay as loaded
            return self.codebook_statistics()
        return super().refresh_semantic_ids()
