"""Full-ranking evaluation that scores what a model ranked, in bounded memory, on any number of processes.

Three corrections to RecBole 1.2.1's ``Trainer.evaluate`` (used by :class:`diger.trainer.SafeCheckpointTrainer`
for every model, ours and RecBole's):

* **Ranked lists shorter than K.** A model that ranks only some items (TIGER/DIGER: the items its beams
  generated) scores the others ``-inf``. RecBole's ``torch.topk`` then fills the top-K with tied ``-inf``
  items, lowest ids first, and counts them as hits when one is the target. :class:`RankedListCollector`
  scores every position whose score is ``-inf`` as a miss, so a list of length ``n < K`` is evaluated as
  exactly that list (all beams invalid -> every metric 0). Scores of ``-inf`` are also RecBole's own
  marks for the padding item and masked history items, which were never meant to be recommended.
* **Memory.** A sequential model's full-sort batch is ``eval_batch_size`` users x ``n_items`` scores
  (plus an int32 hit matrix of the same size). :func:`split_full_sort_batch` cuts each batch into chunks
  of users holding at most ``eval_score_chunk_mb`` MB of float32 scores (default 256).
* **Multi-process evaluation.** RecBole's ``DistributedSampler`` pads the last round with repeated users
  and ``_map_reduce`` then averages the per-process metrics, so up to ``W - 1`` users count twice.
  :func:`gather_user_rows` drops the padded rows and gathers every process's per-user rows, so each
  process computes the metrics of exactly the one-process user set.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch

from . import compat  # noqa: F401  (RecBole shims before RecBole imports)
from recbole.evaluator.collector import Collector

#: Default of the config key ``eval_score_chunk_mb``.
DEFAULT_SCORE_CHUNK_MB = 256.0


class RankedListCollector(Collector):
    """RecBole's ``Collector`` whose ``rec.topk`` counts a ``-inf``-scored position as a miss.

    ``rec.topk`` rows are ``[hit_1, ..., hit_K, n_positives]`` (RecBole's layout, ``[B, K+1]`` int);
    a hit at rank ``j`` needs the target at rank ``j`` *and* a finite score there.
    """

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor) -> None:
        """Collect one batch (``scores_tensor [B, n_items]``, positives as (row, item id) pairs) as RecBole does,
        then zero the hits of this batch's ``rec.topk`` rows at ranks whose score is ``-inf``."""
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.topk"):
            k = max(self.topk)
            # The top-k is sorted, so rank j holds a finite score iff the row has more than j of them.
            finite = (scores_tensor > float("-inf")).sum(dim=1, keepdim=True)  # [B, 1]
            ranked = (torch.arange(k, device=finite.device) < finite).to(torch.int)
            rows = self.data_struct["rec.topk"]
            rows[-scores_tensor.shape[0]:, :k] *= ranked.to(rows.device)


def chunk_rows(n_items: int, chunk_mb: float) -> int:
    """Users per chunk so that ``rows x n_items`` float32 scores take at most ``chunk_mb`` MB (at least 1).

    Raises:
        ValueError: for ``chunk_mb <= 0`` (config key ``eval_score_chunk_mb``).
    """
    if not chunk_mb > 0:
        raise ValueError(f"eval_score_chunk_mb must be > 0 (MB of scores evaluated at once), got {chunk_mb!r}")
    return max(1, int(chunk_mb * 2**20 // (4 * max(1, n_items))))


def split_full_sort_batch(batched_data: Tuple, rows: int) -> Iterator[Tuple]:
    """Cut one batch of RecBole's ``FullSortEvalDataLoader`` into chunks of at most ``rows`` users.

    Args:
        batched_data: ``(interaction, history_index, positive_u, positive_i)`` as the loader yields it:
            ``interaction`` with one row per user, ``history_index`` ``None`` or ``(rows, items)``,
            ``positive_u [P]`` row indices into the batch, ``positive_i [P]`` item ids.
        rows: users per chunk (>= 1).

    Yields:
        The same 4-tuple per chunk, row indices renumbered from 0; the batch itself when it fits.
    """
    interaction, history_index, positive_u, positive_i = batched_data
    n = len(interaction)
    if n <= rows:
        yield batched_data
        return
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        keep = (positive_u >= start) & (positive_u < stop)
        hist = None
        if history_index is not None:
            hu, hi = history_index
            hk = (hu >= start) & (hu < stop)
            hist = (hu[hk] - start, hi[hk])
        yield interaction[start:stop], hist, positive_u[keep] - start, positive_i[keep]


#: DataStruct entries with one row per evaluated user (RecBole 1.2.1's collector).
USER_ROW_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


def padded_rows(sampler) -> torch.Tensor:
    """``[num_samples]`` bool: which of this process's samples are the ``DistributedSampler``'s padding.

    Without shuffling the sampler pads ``range(N)`` to ``total_size`` by repeating its start and gives
    process ``r`` the positions ``r, r + W, r + 2W, ...``; position ``p >= N`` is padding.
    """
    n = len(sampler.dataset)
    pos = torch.arange(sampler.num_samples) * sampler.num_replicas + sampler.rank
    return pos >= n


def gather_user_rows(struct, sampler) -> None:
    """In place, under ``torch.distributed``: every process's per-user rows, padding dropped, in every process.

    Args:
        struct: the collector's ``DataStruct`` after a whole evaluation on this process.
        sampler: the eval loader's ``torch.utils.data.DistributedSampler`` (``shuffle=False``).

    Raises:
        RuntimeError: when a per-user entry's row count differs from the sampler's (not one row per user).
    """
    import torch.distributed as dist

    pad = padded_rows(sampler)
    for key in USER_ROW_KEYS:
        if key not in struct:
            continue
        value = struct[key]
        if value.shape[0] != pad.shape[0]:
            raise RuntimeError(f"evaluation entry {key!r} has {value.shape[0]} rows, the sampler "
                               f"{pad.shape[0]} users: cannot drop the sampler's padding")
        mine = value[~pad.to(value.device)].cpu()
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        struct[key] = torch.cat(parts, dim=0)
