"""Top-K recommendations from a trained run: raw item ids in, ranked raw item ids out (issue 15).

    rec = diger.load_recommender("runs/TIGER-ml-100k-...")       # a run folder or a .pth checkpoint
    rec.recommend([["242", "302", "377"]], k=10)                  # [[("50", -1.93), ...]]
    rec.recommend_users(["196"], k=10)                            # each user's whole known history

The model is rebuilt exactly as ``diger evaluate`` rebuilds it (saved config and seed, the dataset re-read for
its id mapping; semantic-ID models take their SID table and item embeddings from the checkpoint). A history
is scored by the model's own ``full_sort_predict``, the scores full-ranking evaluation ranks, so the ranking of
a history equals the one evaluation computes for it. TIGER/DIGER score only the items their beam search
generated: their lists stop there and may be shorter than ``k`` (no filler items).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["Recommender", "export_semantic_ids", "load_recommender", "resolve_checkpoint", "semantic_id_rows"]


def resolve_checkpoint(path: Union[str, os.PathLike]) -> str:
    """The best-model checkpoint of a run folder written by ``diger run``, or ``path`` itself if it is a file.

    A folder's checkpoint is the one its ``result.json`` names, else the one its ``last.pth`` (an unfinished run)
    names; a folder that was moved is followed (same file name inside the folder).

    Raises:
        FileNotFoundError: naming the folder and the files looked for.
    """
    p = Path(path)
    if p.is_file():
        return str(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such run folder or checkpoint file")
    named = []
    result = p / "result.json"
    if result.is_file():
        ckpt = json.loads(result.read_text(encoding="utf-8")).get("checkpoint")
        if ckpt:
            named.append(ckpt)
    last = p / "last.pth"
    if not named and last.is_file():
        from .trainer import load_checkpoint

        saved = load_checkpoint(str(last)).get("saved_model_file")
        if saved:
            named.append(saved)
    for ckpt in named:
        for candidate in (Path(ckpt), p / Path(ckpt).name):
            if candidate.is_file():
                return str(candidate)
    looked = ", ".join(named) if named else "result.json / last.pth naming a checkpoint"
    raise FileNotFoundError(f"{p}: no best-model checkpoint found (looked for {looked}); "
                            f"was the folder written by `diger run` with saved checkpoints?")


class Recommender:
    """A trained model with its dataset's raw-id mapping, ready to rank items for histories or known users.

    Args:
        model: a RecBole model (TIGER, DIGER, SASRec, GRU4Rec, BERT4Rec, Pop, ...) with weights loaded.
        dataset: the RecBole dataset it was trained on (for ``item_id <-> internal id`` and user histories).
        config: the run's RecBole config.

    Built by :func:`load_recommender`.
    """

    def __init__(self, model, dataset, config) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.config = config
        self.iid_field, self.uid_field = dataset.iid_field, dataset.uid_field
        self.item_tokens = np.asarray(dataset.field2id_token[self.iid_field])  # [n_items], index 0 = [PAD]
        self.item_index = dict(dataset.field2token_id[self.iid_field])
        self.item_index.pop("[PAD]", None)
        self.user_index = dict(dataset.field2token_id[self.uid_field])
        self.user_index.pop("[PAD]", None)
        from recbole.utils import ModelType

        self.sequential = model.type == ModelType.SEQUENTIAL
        self.max_history = int(config["MAX_ITEM_LIST_LENGTH"]) if self.sequential else None
        self._histories: Optional[Dict[int, np.ndarray]] = None
        self.checkpoint: Optional[str] = None  # the file the weights came from (set by load_recommender)

    # ----- id mapping ------------------------------------------------------------------------------
    @property
    def item_ids(self) -> List[str]:
        """Raw ids of every item the model can recommend, in internal-id order (``[PAD]`` excluded)."""
        return [str(t) for t in self.item_tokens[1:]]

    def _item_rows(self, history: Sequence, row: int, skip_unknown: bool) -> List[int]:
        ids = []
        for pos, item in enumerate(history):
            key = str(item)
            if key in self.item_index:
                ids.append(self.item_index[key])
            elif not skip_unknown:
                raise KeyError(f"history {row}, position {pos}: unknown item id {key!r} (not in the training data "
                               f"of this run; pass skip_unknown=True / --skip-unknown to drop unknown ids)")
        if not ids:
            raise ValueError(f"history {row} is empty" + (" after dropping unknown item ids" if history else "")
                             + "; give at least one known item id")
        return ids

    def user_history(self, user_id) -> List[str]:
        """All of ``user_id``'s interactions in the run's dataset, oldest first, as raw item ids.

        Raises:
            KeyError: for a user id the dataset does not know.
        """
        return [str(self.item_tokens[i]) for i in self._user_items(user_id)]

    def _user_items(self, user_id) -> np.ndarray:
        key = str(user_id)
        if key not in self.user_index:
            raise KeyError(f"unknown user id {key!r} (not in the dataset {self.config['dataset']!r} of this run)")
        if self._histories is None:
            feat = self.dataset.inter_feat  # time-ordered by RecBole (order: TO), ties in file order
            users = feat[self.uid_field].numpy()
            items = feat[self.iid_field].numpy()
            order = np.argsort(users, kind="stable")
            users, items = users[order], items[order]
            cuts = np.flatnonzero(np.diff(users)) + 1
            self._histories = {int(g[0]): it for g, it in zip(np.split(users, cuts), np.split(items, cuts))}
        return self._histories.get(self.user_index[key], np.zeros(0, dtype=np.int64))

    def add_items(self, artifact) -> int:
        """Make items that a semantic-ID artifact has and this run lacks recommendable (``diger sid assign``).

        The artifact must hold every item of the run with the run's own semantic ID (an artifact assigned from
        this run, or from the artifact this TIGER run trained on); its extra items get internal ids after the
        run's, their SID rows join the model's table and constrained beam search can generate them. They may
        also appear in histories. Known users' histories are unchanged.

        Args:
            artifact: a folder or :class:`diger.artifact.SemanticIDArtifact`.

        Returns:
            The number of items added.

        Raises:
            ValueError: for a model without semantic IDs; ArtifactError: when the artifact lacks an item of the
            run or gives it another semantic ID (naming it).
        """
        from .artifact import ArtifactError, SemanticIDArtifact, load_artifact

        net = self.model
        if getattr(net, "sid_table", None) is None:
            raise ValueError(f"{self.config['model']} has no semantic IDs: it cannot score items it was not trained "
                             f"on; new items need a TIGER / DIGER run")
        art = artifact if isinstance(artifact, SemanticIDArtifact) else load_artifact(artifact)
        table = net.sid_table.detach().cpu()
        if art.sid_table.shape[1] != table.shape[1]:
            raise ArtifactError(f"sid_artifact {art.folder}: {art.sid_table.shape[1]} code positions, this run "
                                f"{table.shape[1]}")
        row_of = {i: r for r, i in enumerate(art.item_ids)}
        for internal, item in enumerate(self.item_ids, 1):
            r = row_of.get(item)
            if r is None or not torch.equal(art.sid_table[r], table[internal]):
                what = "lacks item" if r is None else "gives another semantic ID to item"
                raise ArtifactError(f"sid_artifact {art.folder} {what} {item!r} of this run; assign new items "
                                    f"from this run (diger sid assign RUN_DIR ...) or from the artifact it trained on")
        new = [r for r, i in enumerate(art.item_ids) if i not in self.item_index]
        if not new:
            return 0
        rows = torch.as_tensor(new, dtype=torch.long)
        if art.item_emb.shape[1] != net.item_emb.shape[1]:
            raise ArtifactError(f"sid_artifact {art.folder}: {art.item_emb.shape[1]}-d item vectors, this run "
                                f"{net.item_emb.shape[1]}-d")
        dev = net.sid_table.device
        net.sid_table = torch.cat([net.sid_table, art.sid_table[rows].to(dev)])
        net.item_emb = torch.cat([net.item_emb, torch.from_numpy(art.item_emb)[rows].to(net.item_emb)])
        net.n_items = int(net.sid_table.shape[0])
        net.table_changed()  # the trie (and DIGER's latent cache) follow the table
        start = len(self.item_tokens)
        ids = [art.item_ids[r] for r in new]
        self.item_tokens = np.concatenate([self.item_tokens.astype(object), np.array(ids, dtype=object)])
        self.item_index.update({i: start + n for n, i in enumerate(ids)})
        return len(ids)

    # ----- ranking ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _rank(self, rows: List[List[int]], users: Optional[List[int]], k: int, exclude_history: bool,
              batch_size: int) -> List[List[Tuple[str, float]]]:
        from recbole.data.interaction import Interaction

        device = self.config["device"]
        out: List[List[Tuple[str, float]]] = []
        for b in range(0, len(rows), batch_size):
            chunk = rows[b: b + batch_size]
            data = {}
            if self.sequential:
                seq = torch.zeros(len(chunk), self.max_history, dtype=torch.long)
                lens = torch.zeros(len(chunk), dtype=torch.long)
                for i, h in enumerate(chunk):
                    h = h[-self.max_history:]  # truncated as in training: the most recent items
                    seq[i, : len(h)] = torch.as_tensor(h)
                    lens[i] = len(h)
                data[self.model.ITEM_SEQ] = seq
                data[self.model.ITEM_SEQ_LEN] = lens
            if users is not None:
                data[self.uid_field] = torch.as_tensor(users[b: b + batch_size], dtype=torch.long)
            elif not self.sequential:  # Pop: the same scores for everyone, it only reads the batch size
                data[self.uid_field] = torch.zeros(len(chunk), dtype=torch.long)
            scores = self.model.full_sort_predict(Interaction(data).to(device))
            scores = scores.view(len(chunk), -1).float().cpu()
            scores[:, 0] = float("-inf")  # [PAD] is never an item
            if exclude_history:
                for i, h in enumerate(chunk):
                    scores[i, torch.as_tensor(h)] = float("-inf")
            top, idx = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            for s_row, i_row in zip(top.tolist(), idx.tolist()):
                out.append([(str(self.item_tokens[i]), s) for s, i in zip(s_row, i_row) if s != float("-inf")])
        return out

    def recommend(self, histories: Sequence[Sequence], k: int = 10, *, exclude_history: bool = False,
                  skip_unknown: bool = False, batch_size: int = 256) -> List[List[Tuple[str, float]]]:
        """Top-``k`` items for each history (a list of raw item ids, oldest first).

        Args:
            histories: ``B`` histories; each is truncated to the model's ``MAX_ITEM_LIST_LENGTH`` most recent items.
            k: list length; TIGER/DIGER lists can be shorter (only beam-search results are scored).
            exclude_history: never recommend an item of the history.
            skip_unknown: drop item ids the run does not know instead of raising.

        Returns:
            ``B`` lists of ``(raw item id, score)``, best first; scores are the model's (TIGER/DIGER: beam
            log-probabilities; SASRec: logits).

        Raises:
            KeyError: naming the history, position and id of an unknown item; ValueError: for an empty history,
            ``k < 1``, or a model that scores users, not histories (general models such as BPR: use
            :meth:`recommend_users`).
        """
        _check_k(k)
        if not self.sequential and self.config["model"] != "Pop":
            raise ValueError(f"{self.config['model']} scores users by id, not histories; use recommend_users")
        if isinstance(histories, (str, bytes)) or (histories and isinstance(histories[0], (str, int))):
            raise TypeError("histories must be a list of histories (lists of item ids), e.g. [['242', '302']]")
        rows = [self._item_rows(h, i, skip_unknown) for i, h in enumerate(histories)]
        return self._rank(rows, None, k, exclude_history, batch_size)

    def recommend_users(self, user_ids: Sequence, k: int = 10, *, exclude_history: bool = False,
                        batch_size: int = 256) -> List[List[Tuple[str, float]]]:
        """Top-``k`` next items for known users, from each user's whole history in the run's dataset.

        Raises:
            KeyError: naming an unknown user id; ValueError: for ``k < 1``.
        """
        _check_k(k)
        rows = [self._user_items(u).tolist() for u in user_ids]
        for u, r in zip(user_ids, rows):
            if not r and self.sequential:
                raise ValueError(f"user {u!r} has no interactions in the dataset of this run")
        return self._rank(rows, [self.user_index[str(u)] for u in user_ids], k, exclude_history, batch_size)


def _check_k(k) -> None:
    """``k`` must be a positive int (numpy ints too; not bool, float or None)."""
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer (the list length), got {k!r}")


def load_recommender(path: Union[str, os.PathLike], *, device: Optional[str] = None,
                     overrides: Optional[Dict] = None, sid_artifact=None) -> Recommender:
    """A :class:`Recommender` from a run folder or checkpoint written by ``diger run``.

    Args:
        path: the run folder (its best checkpoint is used, see :func:`resolve_checkpoint`) or a ``.pth`` file.
        device: ``"cpu"`` to serve a GPU-trained run on the CPU; ``None`` keeps the run's device.
        overrides: config keys to change (e.g. ``{"num_beams": 50}``); the split keys must stay those of the run.
        sid_artifact: an artifact extended by ``diger sid assign``: its new items become recommendable
            (:meth:`Recommender.add_items`).

    Raises:
        FileNotFoundError, CheckpointError: for a missing folder, checkpoint or dataset.
    """
    from .quick_start import rebuild_from_checkpoint

    ckpt_file = resolve_checkpoint(path)
    extra = {"state": "WARNING", "show_progress": False}
    if device == "cpu":
        extra["use_gpu"] = False
    extra.update(overrides or {})
    ckpt, config, ds, splits, net = rebuild_from_checkpoint(ckpt_file, extra)
    net.load_state_dict(ckpt["state_dict"])
    net.load_other_parameter(ckpt.get("other_parameter"))
    rec = Recommender(net, ds, config)  # the whole dataset: every user's full history
    rec.checkpoint = ckpt_file
    if sid_artifact is not None:
        rec.add_items(sid_artifact)
    return rec


def semantic_id_rows(rec: Recommender) -> Tuple[List[str], List[List[int]]]:
    """``(columns, rows)`` of a semantic-ID run's SID table keyed by raw item id, in internal-id order.

    Columns: ``item_id, code_1 .. code_L, suffix`` (``L`` residual codes and the collision suffix of
    :mod:`diger.tokenizer`). The table is the checkpoint's: for DIGER, the one of its best epoch.

    Raises:
        ValueError: for a model without semantic IDs (SASRec, GRU4Rec, ...).
    """
    table = getattr(rec.model, "sid_table", None)
    if table is None:
        raise ValueError(f"{rec.config['model']} has no semantic IDs; only TIGER / DIGER runs can be exported")
    from .artifact import sid_columns

    table = table.detach().cpu().long()
    columns = sid_columns(table.shape[1] - 1)
    rows = [[str(rec.item_tokens[i])] + table[i].tolist() for i in range(1, table.shape[0])]
    return columns, rows


def export_semantic_ids(path: Union[str, os.PathLike], out: Union[str, os.PathLike]) -> int:
    """Write a TIGER/DIGER run's item -> semantic-ID table to ``out`` (``.csv``, ``.jsonl`` or ``.parquet``).

    Args:
        path: a run folder or checkpoint (see :func:`load_recommender`), or a semantic-ID artifact folder.
        out: the file to write; its suffix picks the format. Written to a temp file, then renamed: an
            interrupted export leaves no half-written file.

    Returns:
        The number of items written.

    Raises:
        ValueError: for an unknown suffix or a run without semantic IDs; ImportError: ``.parquet`` without pyarrow.
    """
    out = Path(out)
    fmt = out.suffix.lower()
    if fmt not in (".csv", ".jsonl", ".parquet"):
        raise ValueError(f"{out}: unknown export format {fmt!r}; use .csv, .jsonl or .parquet")
    if fmt == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"{out}: writing parquet needs pyarrow (pip install pyarrow); or use .csv / .jsonl") from exc
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: folder {out.parent} does not exist")
    if (Path(path) / "artifact.json").is_file():  # a semantic-ID artifact (diger sid build): its table as saved
        from .artifact import load_artifact, sid_columns

        art = load_artifact(path)
        columns = sid_columns(art.sid_table.shape[1] - 1)
        rows = [[i] + r for i, r in zip(art.item_ids, art.sid_table.tolist())]
    else:
        columns, rows = semantic_id_rows(load_recommender(path, device="cpu"))
    from .infra import atomic_write

    if fmt == ".csv":
        import csv

        with atomic_write(out, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows(rows)
    elif fmt == ".jsonl":
        with atomic_write(out) as fh:
            for r in rows:
                fh.write(json.dumps(dict(zip(columns, r))) + "\n")
    else:
        import pandas as pd

        with atomic_write(out, "wb") as fh:
            pd.DataFrame(rows, columns=columns).to_parquet(fh, index=False)
    return len(rows)
