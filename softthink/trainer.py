"""``SoftGRPOTrainer``: SofT-GRPO (Gumbel soft thinking) and discrete GRPO in one small loop.

Data flow per step: prompts -> rollout (:mod:`softthink.rollout`) -> rewards
(:mod:`softthink.rewards`, TRL signature) -> group advantages -> replayed log-likelihoods
(:mod:`softthink.replay`) -> clipped loss (:mod:`softthink.grpo`) -> AdamW step. Metrics use TRL's names plus
``soft/*`` ones and are written as one JSON line per step to ``<output_dir>/metrics.jsonl``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from diger.infra import atomic_dir, atomic_write_text  # noqa: F401 (re-exported: softthink.trainer.atomic_write_text)

from .checkpoint import FORMAT, LAST, CheckpointError, atomic_torch_save, load_checkpoint, rng_state, set_rng_state
from .config import SoftGRPOConfig
from .distributed import ProcessLayout, _is_dtensor, fsdp_requested, prompt_seed
from .noise import make_noise
from .grpo import group_advantages, loss_normalizer, masked_mean, nanstd, policy_loss
from .replay import replay_loglik
from .prompts import (completion_token_ids, dataset_rows, decode_completions, encode_prompts,  # noqa: F401
                      preview, prompt_texts, tokenize_prompts)
from .rewards import RewardFunc, RewardFunctionError, check_reward_columns, get_reward_funcs, score_completions  # noqa: F401
from .rollout import GroupGenerators, NonFiniteLogitsError, SoftRollout, Trajectory, concat_trajectories

logger = logging.getLogger(__name__)

__all__ = ["SoftGRPOTrainer", "tokenize_prompts", "decode_completions", "atomic_write_text",
           "lora_config_from_args", "RewardFunctionError", "dataset_rows", "check_reward_columns", "score_completions",
           "completion_token_ids"]

def lora_config_from_args(args: SoftGRPOConfig):
    """``peft.LoraConfig`` from the ``lora_*`` fields (TRL ``ModelConfig`` names; task type CAUSAL_LM).

    ``lora_target_modules=None`` targets every linear layer except the output head (peft's ``"all-linear"``).
    """
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.lora_target_modules or "all-linear", task_type="CAUSAL_LM")


def _trim(traj: Trajectory, prompt_ids, prompt_mask):
    """Drop trailing all-padding response columns and leading all-padding prompt columns of a micro-batch."""
    L = max(1, int(traj.resp_mask.sum(1).max()))
    t = Trajectory(**{k: (v[:, :L] if v.dim() >= 2 else v) for k, v in traj.__dict__.items()})
    keep = prompt_mask.any(0).nonzero()
    start = int(keep[0]) if len(keep) else 0
    return t, prompt_ids[:, start:], prompt_mask[:, start:]


@dataclass
class MicroBatch:
    """One micro-batch of a step (``n`` completions, trimmed to its own lengths), ready for the loss.

    Attributes:
        traj: the rollout rows; prompt_ids, prompt_mask: ``[n, P]`` their prompts.
        loss_mask: ``[n, L]`` bool, loss-carrying positions of scorable completions.
        advantages: ``[n]`` group advantages.
        ell_old: ``[n, L]`` old-policy log-likelihoods (off-policy steps only); ell_ref: reference ones (KL).
    """

    traj: Trajectory
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    ell_old: Optional[torch.Tensor] = None
    ell_ref: Optional[torch.Tensor] = None


@dataclass
class StepBatch:
    """What :meth:`SoftGRPOTrainer.generate_and_score` hands to the optimisation phase and the metrics.

    Attributes:
        traj: this process's rollouts; completions: their texts; rewards: ``[N_local]`` (NaN = unscorable).
        rewards_all: ``[N]`` and per_func_all: ``[N, F]`` gathered over processes in global order.
        micro_batches: the :class:`MicroBatch` records in row order; rollout_time: seconds.
    """

    traj: Trajectory
    completions: List[str]
    rewards: torch.Tensor
    rewards_all: torch.Tensor
    per_func_all: torch.Tensor
    micro_batches: List[MicroBatch]
    rollout_time: float


# per-completion statistics gathered across processes for the metrics (column order of _row_stats)
_ROW_STATS = ("length", "eos", "loss_tokens", "soft_loss_tokens", "soft_steps", "weight_entropy_sum",
              "think_ended", "budget_hit", "think_len")


def _row_stats(traj: Trajectory) -> torch.Tensor:
    """``[B, len(_ROW_STATS)]`` float64 per-completion sums behind the step metrics."""
    lm = traj.loss_mask
    cols = [traj.resp_mask.sum(1), traj.eos, lm.sum(1), (traj.is_soft & lm).sum(1), traj.is_soft.sum(1),
            traj.weight_entropy.sum(1), traj.think_ended, traj.budget_hit, traj.think_len]
    return torch.stack([c.detach().double().cpu() for c in cols], 1)


class SoftGRPOTrainer:
    """SofT-GRPO / discrete-GRPO trainer for any ``AutoModelForCausalLM`` (SofT-GRPO, arXiv 2511.06411).

    Args:
        model: the policy (trained in place).
        tokenizer: its tokenizer; without a pad token its EOS token pads (with a warning). Left padding is
            applied here.
        args: :class:`SoftGRPOConfig`.
        train_dataset: a ``datasets.Dataset`` (or list of dicts) with a ``prompt`` column; other columns reach
            the reward functions as keyword arguments.
        reward_funcs: callables with TRL's signature ``f(prompts, completions, **columns)``, or names from
            :data:`softthink.rewards.REWARD_FUNCS`; default ``args.reward_funcs``. They are called with
            ``prompts``, ``completions`` (message lists when prompts are chat messages, else strings),
            ``completion_ids``, ``think_end`` and every other dataset column as keyword arguments
            (:func:`score_completions`), and return one ``float | None`` per completion (None = not applicable;
            the weighted sum is nan-aware, and a completion for which every function returns None is left out of
            its group's advantage statistics and of the loss). The columns they read
            (:func:`softthink.rewards.required_columns`) are checked here.
        ref_model: frozen reference for the KL term; default a deep copy of ``model`` when ``beta > 0`` (with an
            adapter: the same model with the adapter disabled, as TRL does).
        peft_config: a ``peft.PeftConfig`` (e.g. ``LoraConfig``) wrapping ``model`` with ``peft.get_peft_model``
            (TRL's argument); default: a ``LoraConfig`` from the ``use_peft``/``lora_*`` fields when
            ``args.use_peft``. Only adapter weights are trained, and :meth:`save_model` saves only the adapter.

    Several processes (``accelerate launch`` / ``torchrun``): see :mod:`softthink.distributed` for the layout;
    only the main process writes files, and every metric is computed over all processes' completions.
    Sampling is per prompt (a generator seeded from ``(seed, step, global prompt index)``), so the number of
    processes does not change the rollouts.

    Raises:
        ValueError: on a dataset without ``prompt``, with rows of different columns or without a column a reward
            function reads, too few prompts, a prompt longer than ``max_prompt_length`` (naming the dataset row),
            a tokenizer with neither pad nor EOS token, soft thinking with ``noise_scale == 0``, or a batch
            layout that cannot be split over the processes.
    """

    def __init__(self, model, tokenizer, args: SoftGRPOConfig, train_dataset,
                 reward_funcs: Optional[Sequence[Union[str, RewardFunc]]] = None, ref_model=None, peft_config=None,
                 eval_dataset=None):
        if args.soft_thinking and not make_noise(args).has_density:
            if args.soft_noise == "none":
                raise ValueError("SoftGRPOConfig.soft_noise='none' (plain Soft Thinking) has no density and cannot "
                                 "be trained; choose 'gumbel', 'dirichlet', 'gaussian' or 'embedding_gaussian'")
            raise ValueError(f"SoftGRPOConfig.noise_scale must be > 0 for SofT-GRPO training with soft_noise="
                             f"{args.soft_noise!r} (the soft-token likelihood is the density of the noise)")
        if not args.soft_thinking and args.soft_logprob != "gumbel_density":
            warnings.warn(f"SoftGRPOConfig.soft_logprob={args.soft_logprob!r} has no effect with soft_thinking: false "
                          "(discrete thinking tokens are scored with their log-prob)", UserWarning, stacklevel=2)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
            warnings.warn(f"the tokenizer has no pad token; padding with its EOS token {tokenizer.eos_token!r}",
                          UserWarning, stacklevel=2)
            tokenizer.pad_token = tokenizer.eos_token
        self.rows = dataset_rows(train_dataset)
        if len(self.rows) < args.prompts_per_step:
            raise ValueError(f"train_dataset has {len(self.rows)} prompts < prompts per step {args.prompts_per_step}")
        self._check_prompt_lengths(tokenizer, self.rows, args.max_prompt_length)
        funcs = reward_funcs if reward_funcs is not None else args.reward_funcs
        self.reward_funcs: List[RewardFunc] = [get_reward_funcs([f])[0] if isinstance(f, str) else f for f in funcs]
        self.reward_names = [f if isinstance(f, str) else getattr(f, "__name__", f"reward_{i}")
                             for i, f in enumerate(funcs)]
        w = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(w) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(w)} values for {len(self.reward_funcs)} reward functions")
        self.reward_weights = torch.tensor(w, dtype=torch.float32)
        check_reward_columns(self.reward_funcs, self.reward_names, self.rows[0].keys())
        self.eval_dataset = None
        if args.eval_steps:
            from .evaluate import correctness_reward_name

            if eval_dataset is None:
                raise ValueError(f"SoftGRPOConfig.eval_steps={args.eval_steps} needs an eval_dataset (the held-out "
                                 "problems); pass one, or set eval_steps: 0")
            name = correctness_reward_name(args)
            check_reward_columns(get_reward_funcs([name]), [name], dataset_rows(eval_dataset, "eval_dataset")[0].keys(),
                                 "eval_dataset")
            self.eval_dataset = eval_dataset
        self.device = next(model.parameters()).device
        self.dist = ProcessLayout(args, self.device)
        if args.dynamic_sampling and self.dist.world > 1:
            raise ValueError("SoftGRPOConfig.dynamic_sampling runs on one process only for now (the refill would "
                             f"have to be coordinated across {self.dist.world} processes); set dynamic_sampling: false")
        self._dyn_stats: Dict[str, float] = {}
        self.dist.broadcast_parameters(model)  # every process starts from the main process's weights
        if peft_config is None and args.use_peft:
            peft_config = lora_config_from_args(args)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            self.dist.broadcast_parameters(model)  # the same adapter initialisation everywhere
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        self.model, self.tokenizer, self.args = model, tokenizer, args
        torch.manual_seed(args.seed)
        self._order_gen = torch.Generator().manual_seed(args.seed)
        self._order: List[int] = []
        self.rollout = SoftRollout(model, tokenizer, args)
        self.ref_model = None
        self._ref_is_base = False
        if args.beta > 0:
            if ref_model is None and self.is_peft:
                self._ref_is_base = True  # reference = the policy with its adapter disabled (no copy)
            else:
                self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
                self.ref_model.eval().requires_grad_(False)
        if fsdp_requested(args):
            if self.dist.world == 1:
                warnings.warn("SoftGRPOConfig.fsdp: one process, nothing to shard; training unsharded")
            elif self.is_peft:
                raise ValueError("SoftGRPOConfig.fsdp with a LoRA adapter (use_peft / peft_config) is not supported "
                                 "yet; train the adapter with plain data parallelism (fsdp: no)")
            else:
                n = self.dist.shard(model)
                if self.ref_model is not None:
                    self.dist.shard(self.ref_model)
                logger.info("FSDP: %d transformer blocks sharded over %d processes", n, self.dist.world)
        params = [p for p in model.parameters() if p.requires_grad]
        # sharded (DTensor) and whole parameters in separate groups: AdamW's foreach kernels take one kind at a time
        groups = ([g for g in ([p for p in params if _is_dtensor(p)], [p for p in params if not _is_dtensor(p)]) if g]
                  if self.dist.sharded else [params])
        self.optimizer = torch.optim.AdamW([{"params": g} for g in groups], lr=args.learning_rate,
                                           betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
        warm = max(0, args.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.state = {"global_step": 0, "optimizer_steps": 0, "skipped_steps": 0}
        self.history: List[Dict[str, float]] = []
        self._warned_truncated = False
        # the last step's global prompt list (dataset rows), gathered rewards [N] and advantages [N] (TRL's _logs)
        self.last_batch: Dict[str, Any] = {}

    @property
    def is_main_process(self) -> bool:
        """True on the process that writes files (always True in a single-process run)."""
        return self.dist.is_main

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_prompt_lengths(tokenizer, rows: List[Dict[str, Any]], max_len: int) -> None:
        """Tokenize every prompt once, before anything is generated or written.

        Raises:
            ValueError: naming the first dataset row whose prompt is longer than ``max_len`` tokens (or is
                neither a string nor chat messages), with its length.
        """
        for start in range(0, len(rows), 256):
            chunk = rows[start:start + 256]
            try:
                lengths = [len(ids) for ids in encode_prompts(tokenizer, [r["prompt"] for r in chunk])]
            except ValueError:
                for i, r in enumerate(chunk):
                    try:
                        prompt_texts(tokenizer, [r["prompt"]])
                    except ValueError as exc:
                        raise ValueError(f"train_dataset row {start + i}: {exc}") from None
                raise
            for i, n in enumerate(lengths):
                if n > max_len:
                    raise ValueError(f"train_dataset row {start + i}: prompt has {n} tokens > "
                                     f"max_prompt_length={max_len} ({preview(chunk[i]['prompt'])})")

    def _next_prompts(self) -> List[int]:
        """Dataset rows of this step's global prompt list (the same list on every process)."""
        out = []
        for _ in range(self.args.prompts_per_step):
            if not self._order:
                self._order = torch.randperm(len(self.rows), generator=self._order_gen).tolist()
            out.append(self._order.pop(0))
        return out

    def compute_rewards(self, rows: List[Dict[str, Any]], completions: List[str], traj: Trajectory,
                        row_ids: Optional[Sequence[int]] = None):
        """Weighted nan-aware sum of the reward functions (:func:`score_completions`): ``([N] total, [N, F] per
        function)``. A completion for which every function returned None is unscorable: its total is NaN (left
        out of its group's advantage statistics and of the loss, as TRL does), with a warning.

        Args:
            row_ids: dataset row of each completion (named in errors; default the batch position).
        Raises:
            RewardFunctionError: see :func:`score_completions`.
        """
        per = score_completions(self.reward_funcs, self.reward_names, rows, completions, completion_token_ids(traj),
                                think_end=self.args.think_end, row_ids=row_ids)
        unscorable = torch.isnan(per).all(-1)
        total = (per * self.reward_weights).nansum(-1)
        if bool(unscorable.any()):
            ids = list(row_ids) if row_ids is not None else list(range(len(rows)))
            warnings.warn(f"every reward function returned None for {int(unscorable.sum())} completion(s) (dataset "
                          f"rows {sorted({ids[b] for b in unscorable.nonzero().flatten().tolist()})}); they are left "
                          "out of their group's advantage and of the loss")
            total[unscorable] = float("nan")
        return total, per

    # ------------------------------------------------------------------------------------------------
    def train(self) -> List[Dict[str, float]]:
        """Run the steps from ``state["global_step"]`` to ``args.max_steps`` (0 steps for a finished run) and
        return the per-step metrics (also in ``metrics.jsonl``). Every ``save_steps`` steps and after the last
        one, ``<output_dir>/last.pth`` receives the full training state (:meth:`save_checkpoint`)."""
        from tqdm.auto import tqdm

        args, main = self.args, self.is_main_process
        out = Path(args.output_dir)
        if main:
            out.mkdir(parents=True, exist_ok=True)
        start = self.state["global_step"]
        bar = tqdm(range(start, args.max_steps), desc="softthink" if args.soft_thinking else "grpo",
                   dynamic_ncols=True, initial=start, total=args.max_steps, disable=not main)
        for _ in bar:
            m = self.step()
            self.history.append(m)
            step = self.state["global_step"]
            if args.eval_steps and (step % args.eval_steps == 0 or step == args.max_steps):
                with self.dist.gathered(self.model):  # every process gathers; the main one validates
                    if main:
                        m.update(self.validate())
            if self.dist.sharded and args.save_steps and (step % args.save_steps == 0 or step == args.max_steps):
                state = self.checkpoint_state()  # FSDP: gathering the state is a collective
                if main:
                    atomic_torch_save(state, out / LAST)
            if main:
                atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
                if not self.dist.sharded and args.save_steps and (step % args.save_steps == 0
                                                                  or step == args.max_steps):
                    self.save_checkpoint()
                bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['completions/mean_length']:.1f}",
                                kl=f"{m.get('kl', 0.0):.4f}")
                if m["step"] % args.logging_steps == 0:
                    keys = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl",
                            "entropy", "soft/frac_soft_steps", "grad_norm", "step_time")
                    bar.write(json.dumps({"step": m["step"], **{k: round(m[k], 4) for k in keys if k in m}}))
        if args.save_model:
            self.save_model()  # every process (FSDP gathers the weights); only the main one writes
        self.dist.barrier()
        return self.history

    def validate(self) -> Dict[str, float]:
        """pass@1 and unbiased pass@k (k = 1, 2, 4, ... up to ``eval_num_samples``) of the current policy on the
        held-out set (:func:`softthink.evaluate.evaluate_model`, inference mode ``eval_mode``), as
        ``{"eval/pass@k": ..., "eval/mean_length": ...}``. Sampling uses its own per-problem generators, so
        validation never changes the training run. Main process only."""
        from .evaluate import evaluate_model

        args = self.args
        n = args.eval_num_samples
        ks = sorted({1, n} | {2 ** i for i in range(1, n.bit_length()) if 2 ** i <= n})
        mode = args.eval_mode or ("soft" if args.soft_thinking else "discrete")
        res = evaluate_model(self.model, self.tokenizer, args, self.eval_dataset, mode=mode, num_samples=n, ks=ks,
                             seed=args.seed, progress=False)
        out = {f"eval/pass@{k}": float(res[f"pass@{k}"]) for k in ks}
        out["eval/mean_length"] = float(res["completions/mean_length"])
        return out

    def step(self) -> Dict[str, float]:
        """One rollout + update step over the global batch; returns its (global) metrics.

        Two phases: :meth:`generate_and_score` (rollout, rewards, group advantages, old and reference
        log-likelihoods: a :class:`StepBatch` of :class:`MicroBatch` records), then :meth:`optimise` (replayed
        log-likelihoods, loss, backward, optimiser steps). Each optimiser step's loss is the token mean
        (``loss_type="token_mean"``) or the sequence mean (``"sequence_mean"``) over all of its completions on
        all processes (:func:`softthink.grpo.policy_loss`, ``normalizer``), so neither the micro-batch size nor
        the number of processes changes the update. Unscorable completions (NaN reward) carry no loss.

        Raises:
            ValueError: for a prompt longer than ``max_prompt_length`` (naming the dataset row).
            RewardFunctionError: naming the reward function and the dataset row at fault.
            NonFiniteLogitsError: the model produced NaN/inf logits during the rollout (naming the step, the
                dataset row and the generation index).
        """
        t0 = time.time()
        with self.dist.gathered(self.model, self.ref_model):  # FSDP: whole blocks for the rollout, freed after
            batch = self.generate_and_score()
        acc, grad_norms = self.optimise(batch.micro_batches)
        self.state["global_step"] += 1
        m = self._metrics(batch.rewards_all, batch.per_func_all, self.dist.gather_rows(_row_stats(batch.traj)), acc,
                          grad_norms, batch.rollout_time, time.time() - t0, batch.rewards, batch.completions)
        if self.args.dynamic_sampling:
            m.update(self._dyn_stats)
        self._warn_if_truncated(m, batch.rewards_all)
        return m

    def _roll_and_reward(self, order: List[int], step_no: int, seeds: List[int]):
        """Roll out and score this process's groups of the prompt list ``order`` (dataset rows, global order), the
        group of local prompt ``i`` with a generator seeded ``seeds[i]``. Returns ``(rows, row_ids, prompt_ids,
        prompt_mask, traj, completions, rewards [N], per_func [N, F])``; every process stops together on an error."""
        args, G = self.args, self.args.num_generations
        row_ids = [order[k] for k in self.dist.local_positions for _ in range(G)]
        rows = [self.rows[i] for i in row_ids]
        err = out = None
        try:
            pids, pmask = tokenize_prompts(self.tokenizer, [r["prompt"] for r in rows], args.max_prompt_length,
                                           self.device, row_ids=row_ids)
            gens = GroupGenerators([torch.Generator(device=self.device).manual_seed(s) for s in seeds],
                                   [G] * len(seeds))
            try:
                traj = self.rollout.generate(pids, pmask, generator=gens)
            except NonFiniteLogitsError as exc:
                b = exc.rows[0]
                raise NonFiniteLogitsError(
                    f"step {step_no + 1}: {exc.what} at completion position {exc.position} of dataset row "
                    f"{row_ids[b]} (prompt {preview(rows[b]['prompt'])}), generation {b % G} of {G}",
                    exc.position, exc.rows, exc.what) from None
            completions = decode_completions(self.tokenizer, traj)
            rewards, per_func = self.compute_rewards(rows, completions, traj, row_ids=row_ids)
            out = (rows, row_ids, pids, pmask, traj, completions, rewards, per_func)
        except Exception as exc:  # every process stops at the same point, none waits in a collective
            err = exc
        self.dist.raise_if_failed(err, f"step {step_no + 1}")
        return out

    def _dynamically_sampled(self, order: List[int], step_no: int):
        """DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476): roll out prompt lists until
        ``prompts_per_step`` groups with a non-zero reward spread are collected (at most ``max_num_gen_batches``
        lists; the extra prompts come from the epoch order, each group seeded ``prompt_seed(seed, step, r * P + i)``
        in round ``r``); groups whose scorable rewards are all equal are dropped. When the rounds run out, the batch
        is filled with dropped groups that carry no loss (``trainable`` False), so its size stays
        ``generation_batch_size``; ``dynamic_sampling/*`` metrics record it. One process only.

        Returns:
            ``_roll_and_reward``'s tuple for the kept groups, preceded by their prompt list and followed by
            ``trainable [N]`` bool.
        """
        args, G, P = self.args, self.args.num_generations, self.args.prompts_per_step
        kept, dropped, rounds = [], [], 0
        while len(kept) < P and rounds < args.max_num_gen_batches:
            if rounds:
                order = self._next_prompts()
            out = self._roll_and_reward(order, step_no, [prompt_seed(args.seed, step_no, rounds * P + k)
                                                         for k in range(P)])
            r = out[6].view(P, G)
            valid = ~torch.isnan(r)
            spread = r.masked_fill(~valid, float("-inf")).amax(-1) > r.masked_fill(~valid, float("inf")).amin(-1)
            for g in range(P):
                (kept if bool(spread[g]) else dropped).append((order[g], out, g))
            rounds += 1
        groups = kept[:P] + dropped[:max(0, P - len(kept))]
        self._dyn_stats = {"dynamic_sampling/rounds": float(rounds),
                           "dynamic_sampling/filler_groups": float(max(0, P - len(kept)))}
        rows = [r for _, out, g in groups for r in out[0][g * G:(g + 1) * G]]
        row_ids = [i for _, out, g in groups for i in out[1][g * G:(g + 1) * G]]
        pad = self.tokenizer.pad_token_id
        width = max(out[2].shape[1] for _, out, _ in groups)
        pids = torch.cat([F.pad(out[2][g * G:(g + 1) * G], (width - out[2].shape[1], 0), value=pad)
                          for _, out, g in groups])
        pmask = torch.cat([F.pad(out[3][g * G:(g + 1) * G], (width - out[3].shape[1], 0), value=0)
                           for _, out, g in groups])
        traj = concat_trajectories([out[4].index(slice(g * G, (g + 1) * G)) for _, out, g in groups])
        completions = [c for _, out, g in groups for c in out[5][g * G:(g + 1) * G]]
        rewards = torch.cat([out[6][g * G:(g + 1) * G] for _, out, g in groups])
        per_func = torch.cat([out[7][g * G:(g + 1) * G] for _, out, g in groups])
        trainable = torch.tensor([k < len(kept) for k in range(P) for _ in range(G)])
        return ([o for o, _, _ in groups], rows, row_ids, pids, pmask, traj, completions, rewards, per_func,
                trainable)

    def generate_and_score(self) -> "StepBatch":
        """Phase 1 of :meth:`step`: this process's prompts of the step -> rollouts -> rewards -> group advantages
        (over the gathered global batch) -> micro-batch records with the old-policy (when off-policy) and
        reference log-likelihoods. No gradient. Raises as :meth:`step`."""
        args, model, G = self.args, self.model, self.args.num_generations
        t0 = time.time()
        step_no = self.state["global_step"]
        order = self._next_prompts()
        if args.dynamic_sampling:
            order, rows, row_ids, pids, pmask, traj, completions, rewards, per_func, trainable = \
                self._dynamically_sampled(order, step_no)
        else:
            rows, row_ids, pids, pmask, traj, completions, rewards, per_func = self._roll_and_reward(
                order, step_no, [prompt_seed(args.seed, step_no, k) for k in self.dist.local_positions])
            trainable = None
        t_roll = time.time() - t0
        rewards_all = self.dist.gather_rows(rewards)
        per_func_all = self.dist.gather_rows(per_func)
        adv_all = group_advantages(rewards_all, G, scale=args.scale_rewards, eps=args.adv_eps)
        adv = adv_all[self.dist.local_rows].to(self.device)
        scorable = ~torch.isnan(rewards).to(self.device)
        if trainable is not None:  # dynamic sampling's filler groups (zero reward spread) carry no loss
            scorable &= trainable.to(self.device)
        self.last_batch = {"prompt_rows": order, "rewards": rewards_all, "advantages": adv_all}

        N, micro = len(rows), args.per_device_train_batch_size
        micro_batches = []
        for start in range(0, N, micro):
            sl = slice(start, start + micro)
            t, p, pm = _trim(traj.index(sl), pids[sl], pmask[sl])
            lmask = t.loss_mask & scorable[sl, None]
            if args.mask_truncated_completions:  # overlong completions (no EOS) carry no loss
                lmask = lmask & t.eos[:, None]
            micro_batches.append(MicroBatch(t, p, pm, lmask, adv[sl]))
        on_policy = args.num_iterations == 1 and N // args.mini_batch_size == 1
        with torch.no_grad():
            for mbat in micro_batches:
                t, p, pm = mbat.traj, mbat.prompt_ids, mbat.prompt_mask
                if not on_policy:
                    mbat.ell_old = replay_loglik(model, p, pm, t, args)[0]
                if self.ref_model is not None:
                    mbat.ell_ref = replay_loglik(self.ref_model, p, pm, t, args)[0]
                elif self._ref_is_base:
                    with model.disable_adapter():
                        mbat.ell_ref = replay_loglik(model, p, pm, t, args)[0]
        return StepBatch(traj, completions, rewards, rewards_all, per_func_all, micro_batches, t_roll)

    def optimise(self, micro_batches: List["MicroBatch"]):
        """Phase 2 of :meth:`step`: ``num_iterations`` passes over the micro-batches, ``gradient_accumulation_steps``
        of them per optimiser step. Returns ``(acc, grad_norms)``: per metric the ``[value * weight, weight]`` of
        every micro-batch (weighted by the units it averages over, so that a step metric is the mean over the
        step's tokens or sequences whatever the split) and the gradient norm of every optimiser step."""
        args, model = self.args, self.model
        model.train()
        acc: Dict[str, List[List[float]]] = {}
        grad_norms: List[float] = []
        params = [q for q in model.parameters() if q.requires_grad]
        ga = args.gradient_accumulation_steps
        for it in range(args.num_iterations):
            for m0 in range(0, len(micro_batches), ga):
                group = micro_batches[m0:m0 + ga]
                units = sum(loss_normalizer(mbat.loss_mask, args.loss_type,
                                            max_completion_length=args.max_completion_length) for mbat in group)
                total = float(self.dist.all_reduce_sum(torch.tensor([units], dtype=torch.float64))[0])
                # the gradients are averaged over processes, hence the total over all processes / their number
                normalizer = max(total, 1.0) / self.dist.world
                self.optimizer.zero_grad(set_to_none=True)
                for mbat in group:
                    for k, vw in self._micro_batch_loss(mbat, normalizer, first_pass=(it == 0)).items():
                        acc.setdefault(k, []).append(vw)
                self.dist.average_gradients(params)  # DDP's all-reduce: the global mini-batch's mean gradient
                gn = self.dist.clip_grad_norm_(params, args.max_grad_norm)
                grad_norms.append(float(gn))
                if not math.isfinite(float(gn)):
                    warnings.warn(f"step {self.state['global_step'] + 1}: non-finite gradient norm {float(gn)}; "
                                  "skipping the optimiser step")
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state["skipped_steps"] += 1
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self.state["optimizer_steps"] += 1
        return acc, grad_norms

    def _micro_batch_loss(self, mbat: "MicroBatch", normalizer: float, *, first_pass: bool) -> Dict[str, List[float]]:
        """Replay one micro-batch, back-propagate its share of the loss; returns its metrics as
        ``{name: [value * weight, weight]}``."""
        args, t, lmask = self.args, mbat.traj, mbat.loss_mask
        ell, ent = replay_loglik(self.model, mbat.prompt_ids, mbat.prompt_mask, t, args, compute_entropy=first_pass)
        old = mbat.ell_old if mbat.ell_old is not None else ell.detach()
        loss, lm = policy_loss(
            ell, old, mbat.advantages, lmask, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
            dual_clip_c=args.dual_clip_c, beta=args.beta, ell_ref=mbat.ell_ref, kl_clamp=args.kl_clamp,
            loss_type=args.loss_type, normalizer=normalizer, max_completion_length=args.max_completion_length,
        )
        loss.backward()
        lm["loss"] = lm["policy_loss"] + args.beta * lm.get("kl", 0.0)
        n_units = loss_normalizer(lmask, args.loss_type, max_completion_length=args.max_completion_length)
        n_tok = float(lmask.sum())
        weights = {"loss": n_units, "policy_loss": n_units, "kl": n_units}
        if first_pass:
            lm["entropy"] = float(masked_mean(ent, lmask))
            diff = (ell.detach() - t.rollout_ell).abs()
            soft = lmask & t.is_soft
            lm["soft/rollout_replay_abs_diff"] = float(masked_mean(diff, soft))
            weights["soft/rollout_replay_abs_diff"] = float(soft.sum())
            lm["token/rollout_replay_abs_diff"] = float(masked_mean(diff, lmask))
        return {k: [v * weights.get(k, n_tok), weights.get(k, n_tok)] for k, v in lm.items()}

    def _warn_if_truncated(self, m: Dict[str, float], rewards: torch.Tensor) -> None:
        """Warn once (main process) at the first step where every completion hit ``max_completion_length`` and
        every scorable reward is 0: such a step trains on nothing (all advantages 0), usually because the
        completion budget is too short for the answer."""
        r = rewards[~torch.isnan(rewards)]
        if self._warned_truncated or m["completions/clipped_ratio"] < 1.0 or not len(r) or bool((r != 0).any()):
            return
        self._warned_truncated = True
        if not self.is_main_process:
            return
        args = self.args
        budget = (f", or lower max_think_tokens={args.max_think_tokens} to leave room for the answer"
                  if args.use_thinking and (args.max_think_tokens or 0) >= args.max_completion_length else "")
        warnings.warn(f"step {m['step']}: every completion was cut at max_completion_length="
                      f"{args.max_completion_length} (completions/clipped_ratio={m['completions/clipped_ratio']:.2f}) "
                      f"and every reward is 0, so the step trains on nothing; raise max_completion_length{budget}",
                      UserWarning, stacklevel=3)

    def _metrics(self, rewards, per_func, stats, acc, grad_norms, t_roll, t_step, local_rewards,
                 completions) -> Dict[str, float]:
        """Step metrics over the global batch: ``rewards [N]``, ``per_func [N, F]`` and ``stats [N, S]``
        (:data:`_ROW_STATS`) are gathered in global order; micro-batch metrics (``acc``: ``[value * weight,
        weight]`` per micro-batch) are weighted means over every process's micro-batches."""
        args = self.args
        G = args.num_generations
        col = {k: stats[:, i] for i, k in enumerate(_ROW_STATS)}
        grp = rewards.view(-1, G)
        lengths = col["length"].float()
        term = col["eos"] > 0
        m: Dict[str, float] = {"step": self.state["global_step"]}
        grp_std = nanstd(grp, -1)  # NaN rewards (unscorable completions) are left out, as in the advantages
        m["reward"] = float(rewards.nanmean())
        m["reward_std"] = float(grp_std.nanmean())
        m["frac_reward_zero_std"] = float((grp_std == 0).float().mean())
        for j, name in enumerate(self.reward_names):
            c = per_func[:, j]
            m[f"rewards/{name}/mean"] = float(c.nanmean()) if not torch.isnan(c).all() else float("nan")
            m[f"rewards/{name}/std"] = float(c[~torch.isnan(c)].std()) if (~torch.isnan(c)).sum() > 1 else 0.0
        m["completions/mean_length"] = float(lengths.mean())
        m["completions/min_length"] = float(lengths.min())
        m["completions/max_length"] = float(lengths.max())
        m["completions/clipped_ratio"] = float((~term).float().mean())
        m["completions/mean_terminated_length"] = float(lengths[term].mean()) if bool(term.any()) else 0.0
        keys = sorted(acc)
        if keys:
            sums = self.dist.all_reduce_sum(torch.tensor([[sum(vw for vw, _ in acc[k]), sum(w for _, w in acc[k])]
                                                          for k in keys], dtype=torch.float64))
            for k, (s, n) in zip(keys, sums.tolist()):
                m[k] = float(s / n) if n > 0 else 0.0
        if "kl" not in m:
            m["kl"] = 0.0 if args.beta == 0 else float("nan")
        m["grad_norm"] = float(sum(grad_norms) / max(1, len(grad_norms)))
        m["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        m["soft/frac_soft_steps"] = float(col["soft_loss_tokens"].sum() / col["loss_tokens"].sum().clamp(min=1))
        n_soft = col["soft_steps"].sum()
        m["soft/weight_entropy"] = float(col["weight_entropy_sum"].sum() / n_soft) if float(n_soft) else 0.0
        m["soft/think_end_rate"] = float(col["think_ended"].mean())
        m["soft/think_budget_rate"] = float(col["budget_hit"].mean())
        m["soft/think_length"] = float(col["think_len"].mean())
        m["num_tokens"] = float(col["loss_tokens"].sum())
        m["skipped_steps"] = float(self.state["skipped_steps"])
        m["rollout_time"] = t_roll
        m["step_time"] = t_step
        if args.log_completions and self.is_main_process:
            print(f"[step {m['step']}] reward={float(local_rewards[0]):.2f} completion={completions[0]!r}")
        return m

    # ------------------------------------------------------------------------------------------------
    def _trainable_names(self) -> set:
        return {n for n, p in self.model.named_parameters() if p.requires_grad}

    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything needed to continue the run exactly, as tensors and plain Python values: model weights
        (with an adapter: only the trainable adapter weights), optimiser, LR scheduler, step counters, RNG
        states (torch, numpy, python, the prompt-order generator; the per-prompt generators are a function of
        ``(seed, step, prompt index)`` and need no state), the remaining prompt order, the metrics history and
        the config."""
        if self.dist.sharded:  # whole weights and name-keyed optimiser state, gathered on the main process
            sd, optim = self.dist.full_state_dicts(self.model, self.optimizer)
        else:
            sd, optim = self.model.state_dict(), self.optimizer.state_dict()
        if self.is_peft:
            names = self._trainable_names()
            sd = {k: v for k, v in sd.items() if k in names}
        return {
            "format": FORMAT,
            "global_step": int(self.state["global_step"]),
            "state": {k: int(v) for k, v in self.state.items()},
            "model": sd,
            "optimizer": optim,
            "optimizer_format": "by_name" if self.dist.sharded else "torch",
            "scheduler": self.scheduler.state_dict(),
            "rng": {**rng_state(), "prompt_order": self._order_gen.get_state()},
            "prompt_order": [int(i) for i in self._order],
            "history": list(self.history),
            "config": self.args.to_dict(),
        }

    def save_checkpoint(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write :meth:`checkpoint_state` atomically to ``path`` (default ``<output_dir>/last.pth``) on the main
        process; returns the path there and None on the others. With FSDP every process must call it."""
        if not self.dist.sharded and not self.is_main_process:
            return None
        state = self.checkpoint_state()  # with FSDP a collective: every process calls save_checkpoint
        if not self.is_main_process:
            return None
        path = Path(path or Path(self.args.output_dir) / LAST)
        atomic_torch_save(state, path)
        return path

    def load_checkpoint(self, path: Union[str, Path], state: Optional[Dict[str, Any]] = None) -> None:
        """Restore the state written by :meth:`save_checkpoint` (every process reads the same file), so that
        :meth:`train` continues from the step after the checkpoint and ends as the uninterrupted run.

        Args:
            path: the ``last.pth`` file.
            state: its content when already read with :func:`softthink.checkpoint.load_checkpoint` (``path`` is
                then only named in messages).
        Raises:
            CheckpointError: naming ``path`` when it is missing, truncated, not a softthink checkpoint, or its
                weights do not fit this model.
        """
        ck = state if state is not None else load_checkpoint(path)
        by_name = ck.get("optimizer_format") == "by_name"
        if by_name != self.dist.sharded:
            raise CheckpointError(f"{path}: written {'with' if by_name else 'without'} FSDP; resume it "
                                  f"{'with' if by_name else 'without'} FSDP (SoftGRPOConfig.fsdp)")
        if self.dist.sharded:
            try:
                self.dist.load_full_state_dicts(self.model, self.optimizer, ck["model"], ck["optimizer"])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CheckpointError(f"{path}: weights do not fit the model: {str(exc).splitlines()[0]}") from None
        else:
            try:
                missing, unexpected = self.model.load_state_dict(ck["model"], strict=False)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: weights do not fit the model: {str(exc).splitlines()[0]}") from None
            lost = sorted(set(missing) & self._trainable_names())
            if unexpected or lost:
                raise CheckpointError(f"{path}: weights do not fit the model (unexpected {sorted(unexpected)[:3]}, "
                                      f"missing {lost[:3]})")
            self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.state.update({k: int(v) for k, v in ck["state"].items()})
        set_rng_state(ck["rng"])
        self._order_gen.set_state(ck["rng"]["prompt_order"])
        self._order = [int(i) for i in ck["prompt_order"]]
        self.history = [dict(h) for h in ck["history"]]
        logger.info("resumed from %s: %d of %d steps done", path, self.state["global_step"], self.args.max_steps)

    # ------------------------------------------------------------------------------------------------
    def save_model(self, path: Optional[Union[str, Path]] = None) -> Path:
        """``save_pretrained`` the policy and tokenizer into ``path`` (default ``<output_dir>/model``), atomically,
        with the run config as ``softthink_config.yaml`` next to the weights. With an adapter only the adapter
        (``adapter_config.json`` + ``adapter_model.safetensors``) is written; it names its base model. Every process
        may call it (only the main one writes); with FSDP every process must."""
        import yaml

        path = Path(path or Path(self.args.output_dir) / "model")
        full = self.dist.full_state_dicts(self.model)[0] if self.dist.sharded else None  # FSDP: a collective
        if not self.is_main_process:
            return path
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(str(tmp), **({"state_dict": full} if full is not None else {}))
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / "softthink_config.yaml").write_text(yaml.safe_dump(self.args.to_dict(), sort_keys=False))
        return path
