"""Data parallelism for :class:`softthink.trainer.SoftGRPOTrainer` over ``accelerate`` / ``torch.distributed``.

Layout (as TRL's ``GRPOTrainer``, ``trl/trainer/grpo_trainer.py``): ``generation_batch_size`` is the *global* number
of completions per step; every process runs the same prompt order and takes its own prompts; each prompt's
whole group of ``num_generations`` completions is generated, scored and trained on one process (groups are
never split). Rewards are gathered, group advantages are computed over the gathered rewards in global prompt
order and every process takes back its own rows. ``per_device_train_batch_size * gradient_accumulation_steps``
completions per process make one optimiser step, as in TRL (global mini-batch = that times the number of
processes); gradients are averaged with one all-reduce per optimiser step, so the update equals the
single-process update with ``gradient_accumulation_steps * num_processes`` on the same global batch.

Prompts are dealt to processes in chunks of one local mini-batch: chunk ``c`` (prompts
``[c*C, (c+1)*C)``, ``C = per_device_train_batch_size * gradient_accumulation_steps / num_generations``) goes to
process ``c % num_processes``, so global optimiser step ``j`` covers exactly the completions of the
single-process mini-batch ``j`` (and each micro-batch is the same set of rows in both layouts).

Sampling is per prompt: the rollout draws each group's noise from its own generator seeded by
:func:`prompt_seed` ``(seed, step, global prompt index)``, so a 2-process and a 1-process run with the same seed
produce the same rollouts.

Launch on CPU-only machines with ``accelerate launch --multi_gpu --num_processes 2 -m softthink train ...``
(accelerate 1.x runs a single process for ``--cpu --num_processes 2`` unless MPI is configured) or
``torchrun --nproc_per_node 2 -m softthink train ...``; the backend is gloo on CPU.

**Sharded training (FSDP).** With ``fsdp: full_shard`` (transformers' ``TrainingArguments.fsdp`` name), or under
``accelerate launch --config_file`` of a config with ``distributed_type: FSDP`` (``ACCELERATE_USE_FSDP=true``), every
transformer block (the model's ``_no_split_modules`` classes, or accelerate's ``fsdp_transformer_layer_cls_to_wrap``)
is sharded over the processes with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``): each process keeps
``1/num_processes`` of the blocks' weights, gradients and AdamW moments, and a block's full weights exist only while
it runs. The embeddings, final norm and LM head stay whole on every process (they are read directly to build the
soft inputs) and their gradients are all-reduced as without FSDP. The rollout (and the reference and old-policy
log-likelihoods, and validation) runs between :meth:`ProcessLayout.gathered` boundaries: the blocks are gathered
once per step and freed before the update, so generation does not all-gather every block for every token. Gradients
are reduce-scattered with the same mean as the all-reduce, so the update equals the unsharded one up to rounding
(tests/softthink/test_distributed.py). Checkpoints and ``save_model`` gather full, unsharded state dicts (the files
are the same as without FSDP; resuming needs FSDP again). LoRA adapters (peft) are not supported with FSDP yet.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from diger import distributed as collectives

__all__ = ["prompt_seed", "ProcessLayout", "fsdp_requested"]


def fsdp_requested(args) -> bool:
    """True when the run asks for sharded training: ``args.fsdp`` is ``"full_shard"``, or ``args.fsdp`` is empty and
    accelerate launched the processes with an FSDP config (``ACCELERATE_USE_FSDP=true``)."""
    mode = (args.fsdp or "").strip()
    if mode:
        return mode == "full_shard"
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _is_dtensor(x) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def prompt_seed(seed: int, step: int, index: int) -> int:
    """Seed of the generator of prompt ``index`` (position in the global prompt list) at 0-based ``step``.

    A well-mixed 63-bit integer from ``numpy.random.SeedSequence([seed, step, index])``: independent of the
    number of processes and of which process handles the prompt.

    Raises:
        ValueError: for negative arguments (SeedSequence entropy must be non-negative).
    """
    if min(seed, step, index) < 0:
        raise ValueError(f"prompt_seed: seed, step and index must be >= 0, got {(seed, step, index)}")
    return int(np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ProcessLayout:
    """This process's share of every step and the collectives the trainer needs.

    Args:
        args: the run's :class:`softthink.config.SoftGRPOConfig`.
        device: the policy's device; a CPU device initialises accelerate's ``PartialState(cpu=True)`` (gloo).
        world, rank: compute the layout for this many processes without a process group (tests, planning).
    Attributes:
        world: number of processes; ``rank``: this process's index; ``is_main``: ``rank == 0``.
        local_positions: global prompt positions (0..prompts_per_step-1) handled here, in local order.
        local_rows: ``[N_local]`` long, global completion rows (prompt position * G + j) of the local rows.
        chunk_rows: completions per chunk (one local mini-batch when ``world > 1``).
    Raises:
        ValueError: with several processes, when a local mini-batch is not a whole number of groups or the
            global batch is not a whole number of chunks per process; the message names the config keys.
    """

    def __init__(self, args, device: torch.device, *, world: Optional[int] = None, rank: Optional[int] = None):
        self.state = None
        self.sharded = False  # set by shard(): the transformer blocks are FSDP2-sharded
        self._mesh = None
        self.world, self.rank = 1, 0
        if world is not None:  # layout only (tests, planning); the collectives need a real process group
            self.world, self.rank = int(world), int(rank or 0)
        elif _dist_env():
            from accelerate import PartialState

            self.state = PartialState(cpu=torch.device(device).type == "cpu")
            self.world, self.rank = int(self.state.num_processes), int(self.state.process_index)
        self.is_main = self.rank == 0
        # collectives run on CPU tensors with gloo, on the accelerator with nccl and the like
        backend = getattr(self.state, "backend", None)
        self.comm_device = torch.device("cpu") if backend in (None, "gloo", "mpi") else self.state.device
        G, P = args.num_generations, args.prompts_per_step
        if self.world > 1:
            local_mini = args.mini_batch_size
            if local_mini % G:
                raise ValueError(
                    f"SoftGRPOConfig.per_device_train_batch_size*gradient_accumulation_steps={local_mini} must be a "
                    f"multiple of num_generations={G} with {self.world} processes (a group is never split "
                    "across processes)")
            if args.generation_batch_size % (local_mini * self.world):
                raise ValueError(
                    f"SoftGRPOConfig.generation_batch_size={args.generation_batch_size} must be divisible by "
                    f"per_device_train_batch_size*gradient_accumulation_steps*num_processes="
                    f"{local_mini * self.world} (every process gets the same number of whole groups)")
            chunk = local_mini // G
        else:
            chunk = P
        self.chunk_rows = chunk * G
        self.local_positions: List[int] = [c * chunk + i for c in range(self.rank, P // chunk, self.world)
                                           for i in range(chunk)]
        self.local_rows = torch.tensor([k * G + j for k in self.local_positions for j in range(G)], dtype=torch.long)

    # ------------------------------------------------------------------------------------------------
    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """All processes' ``[N_local, ...]`` rows in global row order (``[N, ...]``); identity with one process."""
        if self.world == 1:
            return x
        from accelerate.utils import gather

        dtype = x.dtype
        y = gather((x.long() if dtype == torch.bool else x).contiguous().to(self.comm_device))  # by rank
        tail = tuple(x.shape[1:])
        y = y.view(self.world, -1, self.chunk_rows, *tail).transpose(0, 1).reshape(-1, *tail)
        return y.to(dtype)

    # The collectives are diger.distributed's (shared with diger's DDP runs); they need a process group.
    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (a new tensor); identity with one process."""
        return x if self.world == 1 else collectives.all_reduce_sum(x)

    def raise_if_failed(self, err: Optional[BaseException], where: str) -> None:
        """Re-raise ``err``; with several processes first agree, so that every process stops (no hang in a later
        collective) and the others name the step that failed elsewhere (:func:`diger.distributed.raise_if_any_failed`)."""
        collectives.raise_if_any_failed(err, where)

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy the main process's parameters and buffers into every process (DDP's start-up broadcast)."""
        collectives.broadcast_module_(module, 0)

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Average ``.grad`` over processes in place (:func:`diger.distributed.average_gradients`); sharded
        parameters are left alone (FSDP's reduce-scatter has averaged them already)."""
        collectives.average_gradients([p for p in params if not _is_dtensor(p)] if self.sharded else params)

    # ----- FSDP -----------------------------------------------------------------------------------------------
    def shard(self, model: torch.nn.Module, layer_classes: Optional[Sequence[str]] = None) -> int:
        """Shard ``model``'s transformer blocks over the processes in place (FSDP2 ``fully_shard``, one unit per
        block); returns the number of blocks. Call after :meth:`broadcast_parameters` and before the optimiser is
        built (it must see the sharded parameters).

        Args:
            layer_classes: class names of the blocks; default accelerate's ``FSDP_TRANSFORMER_CLS_TO_WRAP``
                (comma-separated) if set, else the model's ``_no_split_modules`` (as accelerate's transformer
                wrap policy).
        Raises:
            ValueError: with one process, or when no module of the named classes exists (naming them).
        """
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self.world < 2:
            raise ValueError("FSDP needs several processes (launch with accelerate or torchrun)")
        if layer_classes is None:
            env = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
            layer_classes = ([c.strip() for c in env.split(",") if c.strip()] if env
                             else list(getattr(model, "_no_split_modules", None) or []))
        blocks = [m for m in model.modules() if type(m).__name__ in set(layer_classes)]
        if not blocks:
            raise ValueError(f"FSDP: {type(model).__name__} has no module of the classes {list(layer_classes)} to "
                             "shard; set FSDP_TRANSFORMER_CLS_TO_WRAP (accelerate's fsdp_transformer_layer_cls_to_wrap)")
        if self._mesh is None:
            device = self.state.device if self.state is not None else torch.device("cpu")
            self._mesh = init_device_mesh(device.type, (self.world,))
        for m in blocks:
            fully_shard(m, mesh=self._mesh)
        self.sharded = True
        return len(blocks)

    @contextlib.contextmanager
    def gathered(self, *models: Optional[torch.nn.Module]):
        """Within the block, the sharded blocks of ``models`` hold their full weights (one all-gather each on
        entry, freed on exit): for generation, no-gradient log-likelihoods and validation. Every process must
        enter it. A no-op without FSDP."""
        from torch.distributed.fsdp import FSDPModule

        units = [m for model in models if model is not None for m in model.modules() if isinstance(m, FSDPModule)]
        if not self.sharded or not units:
            yield
            return
        for m in units:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in units:
                m.reshard()
                m.set_reshard_after_forward(True, recurse=False)

    def clip_grad_norm_(self, params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the whole model: with FSDP the 2-norm of the sharded gradients
        is reduced over processes and combined with that of the replicated ones; returns the total norm (before
        clipping, a 0-dim float tensor)."""
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g for g in grads if _is_dtensor(g)]
        whole = [g for g in grads if not _is_dtensor(g)]
        sq = torch.zeros((), dtype=torch.float64)
        if sharded:
            sq = sq + torch.nn.utils.get_total_norm(sharded).full_tensor().double().cpu() ** 2
        if whole:
            sq = sq + torch.nn.utils.get_total_norm(whole).double().cpu() ** 2
        total = sq.sqrt().float()
        coef = min(1.0, float(max_norm) / (float(total) + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return total

    def full_state_dicts(self, model: torch.nn.Module, optimizer=None) -> Tuple[Dict, Dict]:
        """``(model, optimizer)`` state dicts with every weight whole, on the CPU, on the main process (empty dicts
        on the others); the optimizer's is keyed by parameter name (``torch.distributed.checkpoint``'s format).
        A collective under FSDP: every process must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, [optimizer] if optimizer is not None else [], options=opts)

    def load_full_state_dicts(self, model: torch.nn.Module, optimizer, model_sd: Dict, optim_sd: Dict) -> None:
        """Load the state dicts of :meth:`full_state_dicts` (every process passes the full ones) into the sharded
        ``model`` and ``optimizer``; each process keeps its shard. A collective under FSDP.

        Raises:
            RuntimeError: from torch when the weights do not fit the model.
        """
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                              set_optimizer_state_dict)

        set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True))
        # not strict: a parameter that never received a gradient (e.g. a detached input embedding) has no AdamW state
        set_optimizer_state_dict(model, [optimizer], optim_sd, options=StateDictOptions(full_state_dict=True,
                                                                                       strict=False))

    def barrier(self) -> None:
        """Wait for every process (no-op with one)."""
        collectives.barrier()


def _dist_env() -> bool:
    """True when launched by torchrun / accelerate with more than one process, or a process group exists."""
    import os

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
