"""RecBole ``Trainer`` subclasses: safe checkpoints for every model, per-epoch semantic-ID refresh for DIGER.

* :class:`SafeCheckpointTrainer` writes checkpoints holding only tensors and plain data (the
  config as a JSON-able dict), atomically (temp file + rename), so RecBole's own
  ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` load them with
  ``torch.load(weights_only=True)`` (RecBole 1.2.1 pickles whole objects; see :mod:`diger.compat`). Used for baselines too.
* :class:`GenRecTrainer` adds, for TIGER/DIGER: AdamW parameter groups (recommender / codebooks /
  sigma), cosine LR with warm-up, per-group gradient clipping, the uncertainty-decay step, and
  after every epoch the semantic-ID refresh and codebook statistics (official DIGER ``trainer.py``; the statistics of :func:`diger.tokenizer.codebook_stats`).

Multi-process runs (``nproc`` > 1, see :mod:`diger.compat` and :func:`diger.quick_start.run`): the
training forward goes through ``self.distributed_model`` (DDP), only rank 0 writes checkpoints, all
ranks share rank 0's checkpoint file name and wait for it before loading, ``last.pth`` stores every
rank's RNG state, and each SID refresh records per-rank hashes of the SID table, the parameters and
the uncertainty-decay state (``codebook_history[i]["ranks"]``).
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Dict, List

import torch
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from . import compat
from . import distributed as ddist
from . import evaluation
from .infra import CheckpointError, atomic_torch_save, load_plain_checkpoint, rng_state, set_rng_state  # noqa: F401 (re-exported)
from .tokenizer import sid_table_hash
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from recbole.utils import set_color


def _is_diger_checkpoint(ckpt) -> "str | None":
    return None if isinstance(ckpt, dict) and "state_dict" in ckpt else "no 'state_dict'"


def load_checkpoint(path: str, map_location="cpu") -> Dict:
    """Load one of our checkpoints with ``weights_only=True`` (:func:`diger.infra.load_plain_checkpoint`).

    Raises:
        CheckpointError: naming ``path`` when it is missing, truncated/corrupt or lacks a ``state_dict``.
    """
    return load_plain_checkpoint(path, owner="diger", check=_is_diger_checkpoint, map_location=map_location)


#: Per-process config keys never stored in a checkpoint's or run's configuration (a reloaded
#: configuration with ``local_rank`` would try to join a process group).
PROCESS_KEYS = ("local_rank",)


def portable_run_config(external: Dict) -> Dict:
    """The user's config keys (``Config.external_config_dict``) as plain data, without per-process keys."""
    return {k: v for k, v in compat.to_plain(dict(external or {})).items() if k not in PROCESS_KEYS}


class SafeCheckpointTrainer(Trainer):
    """RecBole's ``Trainer`` with plain-data, atomically written checkpoints.

    Under DDP every rank uses rank 0's checkpoint file name, and :meth:`fit` ends with a barrier so
    that no rank loads the best checkpoint before rank 0 has written it.
    """

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: two ranks racing there fail with FileExistsError.
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        self.run_start = None  # time.time() at the run's (virtual) start; set by the runner
        self.elapsed_before = 0.0  # seconds the run had spent before the checkpoint it resumed from
        self.valid_history: List[Dict] = []  # {"epoch", "valid_score"} per evaluated epoch (kept across resume)
        if not config["single_spec"]:  # file names carry a time stamp that may differ between ranks
            self.saved_model_file = ddist.broadcast_object(self.saved_model_file)
        self.eval_collector = evaluation.RankedListCollector(config)

    @property
    def distributed(self) -> bool:
        """True in a multi-process (DDP) run."""
        return not self.config["single_spec"]

    def _checkpoint_state(self, epoch: int) -> Dict:
        return {
            "config": compat.config_to_plain(self.config),
            "run_config": portable_run_config(getattr(self.config, "external_config_dict", {})),
            "model": self.config["model"],
            "dataset": self.config["dataset"],
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_torch_save(self._checkpoint_state(epoch), path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def _full_sort_batch_eval(self, batched_data):
        # One protocol for every model (README, "Evaluation protocol"): RecBole masks a user's training items only
        # for general models (Pop, BPR); sequential ones never are. `exclude_history: False` (our
        # default) evaluates general models like sequential ones; True keeps RecBole's masking.
        if not (self.config["exclude_history"] if "exclude_history" in self.config else False):
            interaction, history_index, positive_u, positive_i = batched_data
            batched_data = (interaction, None, positive_u, positive_i)
        return super()._full_sort_batch_eval(batched_data)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's ``evaluate`` with the corrections of :mod:`diger.evaluation` for full ranking.

        Ranks scored ``-inf`` are misses, each batch is scored in chunks of at most
        ``eval_score_chunk_mb`` MB (default 256), and under DDP the metrics are those of the exact
        one-process user set. The best checkpoint is read with ``weights_only=True``.

        Raises:
            CheckpointError: when the checkpoint to load is missing or unreadable.
        """
        if not eval_data:
            return None
        if load_best_model:
            path = model_file or self.saved_model_file
            ckpt = load_checkpoint(path, map_location=self.device)
            self.model.load_state_dict(ckpt["state_dict"])
            self.model.load_other_parameter(ckpt.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {path}")
        if not isinstance(eval_data, FullSortEvalDataLoader):  # sampled-negative evaluation: RecBole's own
            return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        self.model.eval()
        if self.item_tensor is None:
            self.item_tensor = eval_data._dataset.get_item_feature().to(self.device)
        self.tot_item_num = eval_data._dataset.item_num
        chunk_mb = self.config["eval_score_chunk_mb"] if "eval_score_chunk_mb" in self.config else None
        rows = evaluation.chunk_rows(self.tot_item_num, evaluation.DEFAULT_SCORE_CHUNK_MB if chunk_mb is None else chunk_mb)
        iter_data = tqdm(eval_data, total=len(eval_data), ncols=100,
                         desc=set_color("Evaluate   ", "pink")) if show_progress else eval_data
        for batched_data in iter_data:
            for chunk in evaluation.split_full_sort_batch(batched_data, rows):
                interaction, scores, positive_u, positive_i = self._full_sort_batch_eval(chunk)
                self.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
                del scores
        self.eval_collector.model_collect(self.model)
        struct = self.eval_collector.get_data_struct()
        if self.distributed:
            evaluation.gather_user_rows(struct, eval_data.sampler)
        result = self.evaluator.evaluate(struct)
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result

    def resume_checkpoint(self, resume_file):
        load_checkpoint(str(resume_file))  # clear error for a truncated file before RecBole's load
        super().resume_checkpoint(resume_file)

    # ----- resume after a kill ----------------------------------------------------------------
    LAST = "last.pth"

    def _extra_state(self) -> Dict:
        """Trainer state beyond RecBole's checkpoint; subclasses add theirs."""
        return {}

    def _load_extra_state(self, state: Dict) -> None:
        pass

    @staticmethod
    def _rng_state(train_data) -> Dict:
        return {**rng_state(), "train_loader": train_data.generator.get_state()}

    def _save_last(self, epoch: int, train_data) -> None:
        """After an evaluated epoch: everything needed to continue exactly, in ``<checkpoint_dir>/last.pth``.

        Under DDP a collective (every rank sends its RNG state, ``rng_by_rank``); rank 0 writes.
        """
        rng = self._rng_state(train_data)
        by_rank = None
        if self.distributed:
            by_rank = [None] * ddist.world_size()
            torch.distributed.all_gather_object(by_rank, rng)
            if self.config["local_rank"] != 0:
                return
        state = {
            **self._checkpoint_state(epoch),
            "best_valid_result": compat.to_plain(dict(self.best_valid_result or {})),
            "saved_model_file": self.saved_model_file,
            "rng": rng,
            "valid_history": list(self.valid_history),
            # wall clock of the run so far (seconds), so a resumed run reports the whole run's time
            "elapsed_seconds": time.time() - self.run_start if self.run_start else None,
            **({"rng_by_rank": by_rank} if by_rank else {}),
            **self._extra_state(),
        }
        atomic_torch_save(state, os.path.join(self.checkpoint_dir, self.LAST))

    def resume_last(self, path: str, train_data) -> None:
        """Continue from ``last.pth``: weights, optimiser, early-stopping state, RNG states (and subclass state).

        Raises:
            CheckpointError: naming ``path`` when it is missing or unreadable.
        """
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.load_other_parameter(ckpt.get("other_parameter"))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.cur_step = int(ckpt["cur_step"])
        self.best_valid_score = float(ckpt["best_valid_score"])
        self.best_valid_result = ckpt.get("best_valid_result") or None
        # The best checkpoint sits beside last.pth (both in checkpoint_dir), also after the folder was moved.
        self.saved_model_file = os.path.join(os.path.dirname(os.path.abspath(path)),
                                             os.path.basename(ckpt["saved_model_file"]))
        rng = ckpt["rng"]
        by_rank = ckpt.get("rng_by_rank")
        if self.distributed and by_rank and len(by_rank) == ddist.world_size():
            rng = by_rank[ddist.rank()]  # the same process count continues each rank's own streams
        set_rng_state(rng)
        train_data.generator.set_state(rng["train_loader"])
        self.elapsed_before = float(ckpt.get("elapsed_seconds") or 0.0)
        self.valid_history = list(ckpt.get("valid_history") or [])
        self._load_extra_state(ckpt)
        self.logger.info(f"resumed from {path}: continuing at epoch {self.start_epoch}")

    def training_summary(self) -> Dict:
        """How far training went: ``epochs_run`` (epochs trained up to the last evaluation), ``best_epoch`` (0-based, the one whose
        checkpoint is tested), ``stopped_early`` (RecBole's patience ``stopping_step``, in evaluations, ran out),
        ``stopping_step``, ``eval_step`` and ``valid_history`` (``{"epoch", "valid_score"}`` per evaluation)."""
        hist = self.valid_history
        # the last of equal maxima, as RecBole's early_stopping (value >= best) keeps it
        best = max(reversed(hist), key=lambda h: h["valid_score"]) if hist else None
        return {"epochs_run": (hist[-1]["epoch"] + 1) if hist else 0,
                "best_epoch": best["epoch"] if best else None,
                "stopped_early": bool(self.cur_step > self.stopping_step),
                "stopping_step": int(self.stopping_step), "eval_step": int(self.eval_step),
                "valid_history": list(hist)}

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.start_epoch > 0 and (self.start_epoch >= self.epochs or self.cur_step > self.stopping_step):
            # A resumed run that had already finished (or early-stopped): nothing to train, and RecBole's
            # fit would overwrite the best checkpoint with the last weights.
            self.logger.info("resumed run had finished training; evaluating its best checkpoint")
            return self.best_valid_score, self.best_valid_result

        def on_evaluated(epoch_idx, valid_score):
            self.valid_history.append({"epoch": int(epoch_idx), "valid_score": float(valid_score)})
            if saved:
                self._save_last(epoch_idx, train_data)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        out = super().fit(train_data, valid_data, verbose, saved, show_progress, on_evaluated)
        ddist.barrier()  # rank 0 has written the best checkpoint before any rank loads it
        return out


class GenRecTrainer(SafeCheckpointTrainer):
    """Trainer for :class:`~diger.models.TIGER`, :class:`~diger.models.DIGER` and any other
    :class:`~diger.models.SemanticIDRecommender`: it calls only the contract that class declares
    (``joint_training``, ``param_groups``, ``on_step_end``, ``step_metrics``, ``refresh_semantic_ids``,
    ``codebook_statistics``, ``decay_state``, ``table_changed``; see module doc)."""

    def __init__(self, config, model):
        self.lr_scheduler = None
        super().__init__(config, model)
        self.codebook_history: List[Dict] = []
        self.joint = bool(model.joint_training)
        if bool((model.sid_table[1:] >= 0).all()):
            self.codebook_history.append({"epoch": -1, **model.codebook_statistics()})

    def _build_optimizer(self, **kwargs):
        groups = [g for g in self.model.param_groups(self.config) if g["params"]]
        return torch.optim.AdamW(groups, lr=self.config["learning_rate"])

    def _make_scheduler(self, steps_per_epoch: int) -> None:
        kind = self.config["lr_scheduler"] if "lr_scheduler" in self.config else None
        if not kind or kind == "none":
            return
        if kind != "cosine":
            raise ValueError(f"lr_scheduler must be 'cosine' or 'none', got {kind!r}")
        from transformers import get_cosine_schedule_with_warmup

        total = max(1, steps_per_epoch * self.epochs)
        warm = int(self.config["warmup_steps"] or 0)
        self.lr_scheduler = get_cosine_schedule_with_warmup(self.optimizer, min(warm, total // 2), total)

    def _extra_state(self) -> Dict:
        return {"lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "codebook_history": compat.to_plain(self.codebook_history)}

    def _load_extra_state(self, state: Dict) -> None:
        self._pending_scheduler = state.get("lr_scheduler")
        self.codebook_history = list(state.get("codebook_history") or [])

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.lr_scheduler is None:
            self._make_scheduler(len(train_data))
            pending = getattr(self, "_pending_scheduler", None)
            if pending is not None and self.lr_scheduler is not None:
                self.lr_scheduler.load_state_dict(pending)
                # Building the scheduler reset each group's lr to step 0's value: restore the saved step's.
                for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                    group["lr"] = lr
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _clip(self) -> None:
        if not self.clip_grad_norm:
            return
        for group in self.optimizer.param_groups:
            clip_grad_norm_(group["params"], **self.clip_grad_norm)

    def _amp(self):
        """RecBole's ``enable_amp`` / ``enable_scaler``: ``(autocast dtype or None, GradScaler or None)``.

        The forward pass and losses run under ``torch.autocast`` (bf16 on CPU and on CUDA devices that
        support it, else fp16); the weights and the optimiser stay fp32, and autocast computes
        ``log_softmax`` / cross-entropy in fp32. fp16 uses a ``GradScaler`` when ``enable_scaler`` is set.
        Evaluation (beam search) always runs in fp32. On a CPU without bf16 matrix instructions
        (AVX512-BF16 / AMX) bf16 matmuls are emulated and far slower than fp32: a warning says so.
        """
        if not self.config["enable_amp"]:
            return None, None
        cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
        if not cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            warnings.warn(f"enable_amp: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 matrix "
                          "instructions, so bf16 autocast is much slower than fp32 here; set enable_amp: False",
                          stacklevel=2)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and self.config["enable_scaler"] else None
        return dtype, scaler

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        if self.distributed and loss_func is None:
            # The DDP wrapper runs the model's forward (= calculate_loss) and all-reduces the gradients.
            loss_func = self.distributed_model
        loss_func = loss_func or self.model.calculate_loss
        total_loss = None
        iter_data = tqdm(train_data, total=len(train_data), ncols=100,
                         desc=set_color(f"Train {epoch_idx:>5}", "pink")) if show_progress else train_data
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        step_metrics: Dict[str, float] = {}
        amp_dtype, scaler = self._amp()
        for batch_idx, interaction in enumerate(iter_data):
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = loss_func(interaction)
            if isinstance(losses, tuple):
                loss = sum(losses)
                parts = torch.stack([l.detach().float() for l in losses])
                total_loss = parts if total_loss is None else total_loss + parts
            else:
                loss = losses
                total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
            self._check_nan(loss)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(self.optimizer)
                self._clip()
                scaler.step(self.optimizer)
                scaler.update()
            else:
                loss.backward()
                self._clip()
                self.optimizer.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
            self.model.on_step_end()
            for k, v in self.model.step_metrics().items():  # epoch means, summed without host syncs
                step_metrics[k] = step_metrics.get(k, 0.0) + v
        if total_loss is None:
            raise ValueError("the training set is empty: no batch was produced")
        step_metrics = {k: float(v) / (batch_idx + 1) for k, v in step_metrics.items()}
        if self.distributed and step_metrics:  # means over every rank's batches
            keys = sorted(step_metrics)
            total = ddist.all_reduce_sum(torch.tensor([step_metrics[k] for k in keys], dtype=torch.float64))
            step_metrics = {k: float(v) / ddist.world_size() for k, v in zip(keys, total)}
        if self.joint:
            stats = self.model.refresh_semantic_ids()
            record = {"epoch": int(epoch_idx), **stats, "assignment": step_metrics}
            if self.distributed:
                record["ranks"] = self._check_rank_sync()
            self.codebook_history.append(record)
            used = ", ".join(f"L{lv['level']} {lv['used']}/{self.model.code_num}" for lv in stats["levels"])
            self.logger.info(set_color("semantic IDs", "blue") + f": used codes {used}; collision rate "
                             f"{stats['collision_rate']:.4f}; changed {stats.get('changed_frac', 0.0):.4f}; "
                             + ", ".join(f"{k} {v:.4f}" for k, v in step_metrics.items()))
        if total_loss.dim() == 0:
            return float(total_loss)
        return tuple(float(x) for x in total_loss)

    def _check_rank_sync(self) -> Dict:
        """Collective, after a SID refresh under DDP: per-rank hashes of the SID table, the parameters and
        the uncertainty-decay state (FrqUD usage EMAs, SDUD sigmas), each a list indexed by rank.

        The SID table is recomputed on every rank from identical codebooks, so the hashes agree; if they
        ever do not, rank 0's table is broadcast (``"sid_table_repaired": True``) and a warning logged.
        """
        model = self.model
        out = {
            "sid_table": ddist.gather_strings(sid_table_hash(model.sid_table)),
            "parameters": ddist.gather_strings(ddist.tensor_digest([p for p in model.parameters()])),
            "decay_state": ddist.gather_strings(ddist.tensor_digest(model.decay_state()) if model.decay_state() else ""),
        }
        if len(set(out["sid_table"])) > 1:
            self.logger.warning(f"semantic-ID tables differ across ranks {out['sid_table']}; using rank 0's")
            ddist.broadcast_tensor_(model.sid_table)
            model.table_changed()
            out["sid_table_repaired"] = True
        return out
