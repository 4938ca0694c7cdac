"""``SoftGRPOTrainer``: SofT-GRPO (Gumbel soft thinking) and discrete GRPO in one small loop.

Data flow per step (SofT-GRPO-method.md §11.6): prompts -> rollout (:mod:`softthink.rollout`) -> rewards
(:mod:`softthink.rewards`, TRL signature) -> group advantages -> replayed log-likelihoods
(:mod:`softthink.replay`) -> clipped loss (:mod:`softthink.grpo`) -> AdamW step. Metrics use TRL's names plus
``soft/*`` ones and are written as one JSON line per step to ``<output_dir>/metrics.jsonl``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from .config import SoftGRPOConfig
from .grpo import group_advantages, masked_mean, policy_loss
from .replay import replay_loglik
from .rewards import get_reward_funcs
from .rollout import SoftRollout, Trajectory

logger = logging.getLogger(__name__)

__all__ = ["SoftGRPOTrainer", "tokenize_prompts", "decode_completions", "atomic_write_text",
           "lora_config_from_args"]

RewardFunc = Callable[..., List[Optional[float]]]


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def lora_config_from_args(args: SoftGRPOConfig):
    """``peft.LoraConfig`` from the ``lora_*`` fields (TRL ``ModelConfig`` names; task type CAUSAL_LM).

    ``lora_target_modules=None`` targets every linear layer except the output head (peft's ``"all-linear"``).
    """
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.lora_target_modules or "all-linear", task_type="CAUSAL_LM")


def _is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def tokenize_prompts(tokenizer, prompts: Sequence[Any], max_prompt_length: int, device="cpu"):
    """Left-padded prompt ids and mask. Chat-message prompts get the chat template with a generation prompt;
    string prompts are used verbatim (TRL's convention).

    Returns:
        ``(ids [B, P], mask [B, P])``.
    Raises:
        ValueError: if a prompt is longer than ``max_prompt_length`` tokens.
    """
    texts = []
    for p in prompts:
        if _is_conversational(p):
            texts.append(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False))
        elif isinstance(p, str):
            texts.append(p)
        else:
            raise ValueError(f"prompt must be a string or a list of chat messages, got {type(p).__name__}")
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    lengths = enc["attention_mask"].sum(1)
    if int(lengths.max()) > max_prompt_length:
        i = int(lengths.argmax())
        raise ValueError(f"prompt {i} has {int(lengths[i])} tokens > max_prompt_length={max_prompt_length}")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def decode_completions(tokenizer, traj: Trajectory) -> List[str]:
    """Readable completion texts: ``decode(tok[resp_mask])`` without special tokens (forced markers included)."""
    out = []
    for b in range(traj.tok.shape[0]):
        ids = traj.tok[b][traj.resp_mask[b]].tolist()
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def _trim(traj: Trajectory, prompt_ids, prompt_mask):
    """Drop trailing all-padding response columns and leading all-padding prompt columns of a micro-batch."""
    L = max(1, int(traj.resp_mask.sum(1).max()))
    t = Trajectory(**{k: (v[:, :L] if v.dim() >= 2 else v) for k, v in traj.__dict__.items()})
    keep = prompt_mask.any(0).nonzero()
    start = int(keep[0]) if len(keep) else 0
    return t, prompt_ids[:, start:], prompt_mask[:, start:]


class SoftGRPOTrainer:
    """SofT-GRPO / discrete-GRPO trainer for any ``AutoModelForCausalLM`` (SofT-GRPO-method.md §11.6).

    Args:
        model: the policy (trained in place).
        tokenizer: its tokenizer; must have a pad token (left padding is applied here).
        args: :class:`SoftGRPOConfig`.
        train_dataset: a ``datasets.Dataset`` (or list of dicts) with a ``prompt`` column; other columns reach
            the reward functions as keyword arguments.
        reward_funcs: callables with TRL's signature ``f(prompts, completions, **columns)``, or names from
            :data:`softthink.rewards.REWARD_FUNCS`; default ``args.reward_funcs``. They are called with
            ``prompts``, ``completions`` (message lists when prompts are chat messages, else strings),
            ``completion_ids``, ``think_end`` and every other dataset column as keyword arguments, and return
            one ``float | None`` per completion (None = not applicable; the weighted sum is nan-aware).
        ref_model: frozen reference for the KL term; default a deep copy of ``model`` when ``beta > 0`` (with an
            adapter: the same model with the adapter disabled, as TRL does).
        peft_config: a ``peft.PeftConfig`` (e.g. ``LoraConfig``) wrapping ``model`` with ``peft.get_peft_model``
            (TRL's argument); default: a ``LoraConfig`` from the ``use_peft``/``lora_*`` fields when
            ``args.use_peft``. Only adapter weights are trained, and :meth:`save_model` saves only the adapter.
    Raises:
        ValueError: on a dataset without ``prompt``, too few prompts, or soft thinking with ``noise_scale == 0``.
    """

    def __init__(self, model, tokenizer, args: SoftGRPOConfig, train_dataset,
                 reward_funcs: Optional[Sequence[Union[str, RewardFunc]]] = None, ref_model=None, peft_config=None):
        if peft_config is None and args.use_peft:
            peft_config = lora_config_from_args(args)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        self.model, self.tokenizer, self.args = model, tokenizer, args
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if args.soft_thinking and args.soft_noise == "none":
            raise ValueError("SoftGRPOConfig.soft_noise='none' (plain Soft Thinking) has no density and cannot be "
                             "trained; choose 'gumbel', 'dirichlet', 'gaussian' or 'embedding_gaussian'")
        if args.soft_thinking and args.soft_noise == "gumbel" and args.noise_scale <= 0:
            raise ValueError("SoftGRPOConfig.noise_scale must be > 0 for SofT-GRPO training (the soft-token "
                             "likelihood is the Gumbel density of the noise)")
        self.rows = self._rows(train_dataset)
        if len(self.rows) < args.prompts_per_step:
            raise ValueError(f"train_dataset has {len(self.rows)} prompts < prompts per step {args.prompts_per_step}")
        funcs = reward_funcs if reward_funcs is not None else args.reward_funcs
        self.reward_funcs: List[RewardFunc] = [get_reward_funcs([f])[0] if isinstance(f, str) else f for f in funcs]
        self.reward_names = [f if isinstance(f, str) else getattr(f, "__name__", f"reward_{i}")
                             for i, f in enumerate(funcs)]
        w = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(w) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(w)} values for {len(self.reward_funcs)} reward functions")
        self.reward_weights = torch.tensor(w, dtype=torch.float32)
        self.device = next(model.parameters()).device
        torch.manual_seed(args.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(args.seed)
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
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                           weight_decay=args.weight_decay)
        warm = max(0, args.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.state = {"global_step": 0, "optimizer_steps": 0, "skipped_steps": 0}
        self.history: List[Dict[str, float]] = []

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _rows(dataset) -> List[Dict[str, Any]]:
        if hasattr(dataset, "column_names"):
            if "prompt" not in dataset.column_names:
                raise ValueError(f"train_dataset needs a 'prompt' column; it has {dataset.column_names}")
            return [dict(r) for r in dataset]
        rows = list(dataset)
        if not rows or "prompt" not in rows[0]:
            raise ValueError("train_dataset needs a 'prompt' column")
        return rows

    def _next_prompts(self) -> List[Dict[str, Any]]:
        out = []
        for _ in range(self.args.prompts_per_step):
            if not self._order:
                self._order = torch.randperm(len(self.rows), generator=self._order_gen).tolist()
            out.append(self.rows[self._order.pop(0)])
        return out

    def compute_rewards(self, rows: List[Dict[str, Any]], completions: List[str], traj: Trajectory):
        """Weighted nan-aware sum of the reward functions: ``([N] total, [N, F] per function)``."""
        prompts = [r["prompt"] for r in rows]
        conv = _is_conversational(prompts[0])
        comps = [[{"role": "assistant", "content": c}] for c in completions] if conv else completions
        comp_ids = [traj.tok[b][traj.resp_mask[b]].tolist() for b in range(len(rows))]
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        per = torch.full((len(rows), len(self.reward_funcs)), float("nan"))
        for j, f in enumerate(self.reward_funcs):
            vals = f(prompts=prompts, completions=comps, completion_ids=comp_ids, think_end=self.args.think_end,
                     **columns)
            if len(vals) != len(rows):
                raise ValueError(f"reward {self.reward_names[j]!r} returned {len(vals)} values for {len(rows)} completions")
            per[:, j] = torch.tensor([float("nan") if v is None else float(v) for v in vals])
        if torch.isnan(per).all(-1).any():
            warnings.warn("all reward functions returned None for some completions; their reward is 0")
        total = (per * self.reward_weights).nansum(-1)
        return total, per

    # ------------------------------------------------------------------------------------------------
    def train(self) -> List[Dict[str, float]]:
        """Run ``args.max_steps`` steps; returns the per-step metrics (also in ``metrics.jsonl``)."""
        from tqdm.auto import tqdm

        args = self.args
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(range(args.max_steps), desc="softthink" if args.soft_thinking else "grpo", dynamic_ncols=True)
        for _ in bar:
            m = self.step()
            self.history.append(m)
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
            bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['completions/mean_length']:.1f}",
                            kl=f"{m.get('kl', 0.0):.4f}")
            if m["step"] % args.logging_steps == 0:
                keys = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl", "entropy",
                        "soft/frac_soft_steps", "grad_norm", "step_time")
                bar.write(json.dumps({"step": m["step"], **{k: round(m[k], 4) for k in keys if k in m}}))
        if args.save_model:
            self.save_model()
        return self.history

    def step(self) -> Dict[str, float]:
        """One rollout + update step; returns its metrics."""
        args, model = self.args, self.model
        t0 = time.time()
        prompt_rows = self._next_prompts()
        rows = [r for r in prompt_rows for _ in range(args.num_generations)]
        pids, pmask = tokenize_prompts(self.tokenizer, [r["prompt"] for r in rows], args.max_prompt_length,
                                       self.device)
        traj = self.rollout.generate(pids, pmask, generator=self.generator)
        t_roll = time.time() - t0
        completions = decode_completions(self.tokenizer, traj)
        rewards, per_func = self.compute_rewards(rows, completions, traj)
        adv = group_advantages(rewards, args.num_generations, scale=args.scale_rewards, eps=args.adv_eps)
        adv = adv.to(self.device)

        N, mb, micro = len(rows), args.mini_batch_size, args.per_device_train_batch_size
        micro_slices = [slice(i, i + micro) for i in range(0, N, micro)]
        batches = {}
        for sl in micro_slices:
            batches[sl.start] = _trim(traj.index(sl), pids[sl], pmask[sl])
        on_policy = args.num_iterations == 1 and N // mb == 1
        ell_old, ell_ref = {}, {}
        with torch.no_grad():
            for sl in micro_slices:
                t, p, pm = batches[sl.start]
                if not on_policy:
                    ell_old[sl.start] = replay_loglik(model, p, pm, t, args)[0]
                if self.ref_model is not None:
                    ell_ref[sl.start] = replay_loglik(self.ref_model, p, pm, t, args)[0]
                elif self._ref_is_base:
                    with model.disable_adapter():
                        ell_ref[sl.start] = replay_loglik(model, p, pm, t, args)[0]

        model.train()
        acc: Dict[str, List[float]] = {}
        grad_norms: List[float] = []
        n_acc = args.gradient_accumulation_steps
        for it in range(args.num_iterations):
            for m0 in range(0, N, mb):
                self.optimizer.zero_grad(set_to_none=True)
                for sl in micro_slices:
                    if not (m0 <= sl.start < m0 + mb):
                        continue
                    t, p, pm = batches[sl.start]
                    ell, ent = replay_loglik(model, p, pm, t, args, compute_entropy=(it == 0))
                    old = ell_old.get(sl.start, ell.detach())
                    loss, lm = policy_loss(
                        ell, old, adv[sl], t.loss_mask, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                        dual_clip_c=args.dual_clip_c, beta=args.beta, ell_ref=ell_ref.get(sl.start),
                        kl_clamp=args.kl_clamp, loss_type=args.loss_type, num_micro_batches=n_acc,
                    )
                    loss.backward()
                    lm["loss"] = float(loss.detach()) * n_acc
                    if it == 0:
                        lm["entropy"] = float(masked_mean(ent, t.loss_mask))
                        diff = (ell.detach() - t.rollout_ell).abs()
                        lm["soft/rollout_replay_abs_diff"] = float(masked_mean(diff, t.loss_mask & t.is_soft)) \
                            if bool(t.is_soft.any()) else 0.0
                        lm["token/rollout_replay_abs_diff"] = float(masked_mean(diff, t.loss_mask))
                    for k, v in lm.items():
                        acc.setdefault(k, []).append(v)
                params = [q for q in model.parameters() if q.requires_grad]
                gn = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
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
        self.state["global_step"] += 1
        return self._metrics(rewards, per_func, traj, acc, grad_norms, t_roll, time.time() - t0, completions)

    def _metrics(self, rewards, per_func, traj, acc, grad_norms, t_roll, t_step, completions) -> Dict[str, float]:
        args = self.args
        G = args.num_generations
        grp = rewards.view(-1, G)
        lengths = traj.resp_mask.sum(1).float()
        term = traj.eos
        m: Dict[str, float] = {"step": self.state["global_step"]}
        m["reward"] = float(rewards.mean())
        m["reward_std"] = float(grp.std(-1, unbiased=True).mean())
        m["frac_reward_zero_std"] = float((grp.std(-1) == 0).float().mean())
        for j, name in enumerate(self.reward_names):
            col = per_func[:, j]
            m[f"rewards/{name}/mean"] = float(col.nanmean()) if not torch.isnan(col).all() else float("nan")
            m[f"rewards/{name}/std"] = float(col[~torch.isnan(col)].std()) if (~torch.isnan(col)).sum() > 1 else 0.0
        m["completions/mean_length"] = float(lengths.mean())
        m["completions/min_length"] = float(lengths.min())
        m["completions/max_length"] = float(lengths.max())
        m["completions/clipped_ratio"] = float((~term).float().mean())
        m["completions/mean_terminated_length"] = float(lengths[term].mean()) if bool(term.any()) else 0.0
        for k, v in acc.items():
            m[k] = float(sum(v) / len(v))
        if "kl" not in m:
            m["kl"] = 0.0 if args.beta == 0 else float("nan")
        m["grad_norm"] = float(sum(grad_norms) / max(1, len(grad_norms)))
        m["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        lm = traj.loss_mask
        m["soft/frac_soft_steps"] = float((traj.is_soft & lm).sum() / lm.sum().clamp(min=1))
        n_soft = traj.is_soft.sum()
        m["soft/weight_entropy"] = float(traj.weight_entropy.sum() / n_soft) if int(n_soft) else 0.0
        m["soft/think_end_rate"] = float(traj.think_ended.float().mean())
        m["soft/think_budget_rate"] = float(traj.budget_hit.float().mean())
        m["soft/think_length"] = float(traj.think_len.float().mean())
        m["num_tokens"] = float(lm.sum())
        m["skipped_steps"] = float(self.state["skipped_steps"])
        m["rollout_time"] = t_roll
        m["step_time"] = t_step
        if args.log_completions:
            print(f"[step {m['step']}] reward={float(rewards[0]):.2f} completion={completions[0]!r}")
        return m

    # ------------------------------------------------------------------------------------------------
    def save_model(self, path: Optional[Union[str, Path]] = None) -> Path:
        """``save_pretrained`` the policy and tokenizer into ``path`` (default ``<output_dir>/model``), atomically,
        with the run config as ``softthink_config.yaml`` next to the weights. With an adapter only the adapter
        (``adapter_config.json`` + ``adapter_model.safetensors``) is written; it names its base model."""
        import yaml

        path = Path(path or Path(self.args.output_dir) / "model")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
        try:
            self.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / "softthink_config.yaml").write_text(yaml.safe_dump(self.args.to_dict(), sort_keys=False))
            if path.exists():
                old = path.with_name(path.name + ".old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path
