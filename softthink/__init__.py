"""SofT-GRPO: Gumbel-reparameterized soft-thinking policy optimization on Hugging Face causal LMs.

Public API (mirrors TRL's ``GRPOConfig`` / ``GRPOTrainer``)::

    from softthink import SoftGRPOConfig, SoftGRPOTrainer, math_verify_reward
    trainer = SoftGRPOTrainer(model, tokenizer, SoftGRPOConfig(...), train_dataset, reward_funcs=[math_verify_reward])
    trainer.train()

Modules: ``config`` (SoftGRPOConfig), ``sampling`` (filters, Gumbel soft tokens, densities), ``rollout`` (KV-cached
soft/discrete generation), ``replay`` (per-position log-likelihoods), ``grpo`` (advantages, loss), ``rewards``,
``data`` (reasoning-gym), ``models`` (GGUF conversion, loading), ``trainer``, ``distributed`` (several
processes), ``checkpoint`` (``last.pth`` for ``--resume``), ``evaluate`` (pass@k), ``plot``, ``cli``.

Method: SofT-GRPO, Zheng & Lee, arXiv 2511.06411; official code ``zz1358m/SofT-GRPO-master``.
"""
__version__ = "0.1.0"

__all__ = ["SoftGRPOConfig", "SoftGRPOTrainer", "math_verify_reward", "task_scorer_reward", "pass_at_k"]


def __getattr__(name):  # lazy: `import softthink` stays cheap (no torch/transformers import)
    if name == "SoftGRPOConfig":
        from .config import SoftGRPOConfig
        return SoftGRPOConfig
    if name == "SoftGRPOTrainer":
        from .trainer import SoftGRPOTrainer
        return SoftGRPOTrainer
    if name in ("math_verify_reward", "task_scorer_reward"):
        from . import rewards
        return getattr(rewards, name)
    if name == "pass_at_k":
        from .evaluate import pass_at_k
        return pass_at_k
    raise AttributeError(f"module 'softthink' has no attribute {name!r}")
