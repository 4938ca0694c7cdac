"""RecBole baselines that RecBole 1.2.1 lacks in the form the literature uses them.

:class:`SASRecBCE` is SASRec trained as in its paper (Kang & McAuley, "Self-Attentive Sequential
Recommendation", ICDM 2018, Sec. III-E): binary cross-entropy on the next item against one sampled
negative. RecBole's ``SASRec`` offers only ``loss_type`` CE (softmax over all items) and BPR
(pairwise ranking), so the paper's objective needs this subclass; everything else (layers,
``forward``, ``predict``, ``full_sort_predict``) is RecBole's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import SASRec
from recbole.utils import InputType

from .. import compat  # noqa: F401


class SASRecBCE(SASRec):
    """SASRec with the binary cross-entropy loss of the SASRec paper (Sec. III-E).

    Loss for a batch of B training prefixes with user representation ``s_b`` (B x d), next item
    ``p_b`` and one uniformly sampled negative ``n_b``::

        L = mean_b[-log sigmoid(<s_b, e_{p_b}>)] + mean_b[-log(1 - sigmoid(<s_b, e_{n_b}>))]

    Config: ``loss_type`` must be ``BCE`` (or absent) and ``train_neg_sample_args`` must sample
    negatives (e.g. ``{distribution: uniform, sample_num: 1}``); with ``sample_num`` N RecBole repeats
    each prefix N times, one negative each.

    Raises:
        ValueError: naming ``loss_type`` or ``train_neg_sample_args`` when they do not fit.
    """

    input_type = InputType.PAIRWISE  # rows carry (prefix, positive, negative)
    config_chain = ("SASRec", "SASRecBCE")  # RecBole's SASRec defaults, then ours

    @staticmethod
    def check_config(config) -> None:
        """Validate ``loss_type`` and ``train_neg_sample_args`` before any data is loaded.

        Raises:
            ValueError: naming the key at fault.
        """
        loss_type = config["loss_type"]
        if loss_type not in (None, "BCE"):
            raise ValueError(f"SASRecBCE: loss_type must be 'BCE', got {loss_type!r} (use SASRec for CE or BPR)")
        neg = config["train_neg_sample_args"]
        if not neg or neg.get("distribution") in (None, "none") or not neg.get("sample_num"):
            raise ValueError(
                "SASRecBCE: train_neg_sample_args must sample negatives, e.g. "
                f"{{distribution: uniform, sample_num: 1}}; got {neg!r}"
            )

    def __init__(self, config, dataset):
        self.check_config(config)
        config["loss_type"] = "BPR"  # RecBole's SASRec accepts only BPR | CE; it builds the same layers
        try:
            super().__init__(config, dataset)
        finally:
            config["loss_type"] = "BCE"
        self.loss_type = "BCE"
        self.loss_fct = None

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Scalar BCE loss of one batch (see the class docstring)."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, d]
        pos = (seq_output * self.item_embedding(interaction[self.POS_ITEM_ID])).sum(-1)  # [B]
        neg = (seq_output * self.item_embedding(interaction[self.NEG_ITEM_ID])).sum(-1)  # [B]
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))


BASELINES = {"SASRecBCE": SASRecBCE}
