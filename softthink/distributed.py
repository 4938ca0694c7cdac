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
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from diger import distributed as collectives

__all__ = ["prompt_seed", "ProcessLayout"]


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
        """Average ``.grad`` over processes in place (:func:`diger.distributed.average_gradients`)."""
        collectives.average_gradients(params)

    def barrier(self) -> None:
        """Wait for every process (no-op with one)."""
        collectives.barrier()


def _dist_env() -> bool:
    """True when launched by torchrun / accelerate with more than one process, or a process group exists."""
    import os

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
