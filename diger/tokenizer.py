"""RQ-VAE semantic-ID tokenizer: MLP encoder/decoder, residual codebooks, SID table (DIGER, arXiv 2601.19711).

Semantic ID layout: ``L`` residual codes ``c_1..c_L`` (each in ``[0, K_l)``) plus a last collision
suffix ``c_{L+1}`` in ``[0, suffix_size)`` that numbers items sharing the same ``L``-code prefix in
item-id order, so every item's semantic ID is unique. The SID table is ``[N+1, L+1]`` long, row 0
(RecBole's ``[PAD]``) is ``-1``.

Official code: ``junchen-fu/DIGER`` ``vq.py`` (RQ-VAE) and ``trainer.py`` (``Trainer.get_code``, the SID table).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .decay import UncertaintyDecay
from .kmeans import residual_kmeans
from .quantizer import LevelOut, VectorQuantizer
from .sinkhorn import sinkhorn_assign

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch on ``n`` intra-op threads inside the block (or decorated function), restoring the caller's count."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread():
    """:func:`torch_threads` ``(1)``: the stage-0 computations run on one thread whatever the caller set.

    Why: the fp32 GEMMs of the RQ-VAE backward split their reduction over the batch by thread count
    on some CPUs (measured on an AVX512/AMX Xeon: 1 and 2 threads pre-trained different RQ-VAEs from one
    seed), so semantic IDs depended on ``torch.get_num_threads()``. The tokenizer is small (ML-100K
    pre-training: about 26 s on one thread), so one thread buys thread-independent semantic IDs cheaply.
    """
    return torch_threads(1)


class SemanticIDCollisionError(ValueError):
    """A group of items sharing an ``L``-code prefix is larger than the suffix vocabulary."""


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` with Xavier-normal weights and zero bias (no activation last)."""
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        nn.init.xavier_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def add_collision_suffix(prefix: torch.Tensor, suffix_size: int) -> torch.Tensor:
    """Append the collision suffix: rank of each item within its prefix group, in item order.

    Args:
        prefix: ``[N, L]`` long codes of items ``0..N-1`` (internal ids shifted by one).
        suffix_size: suffix vocabulary size.

    Returns:
        ``[N, L+1]`` long; unique rows.

    Raises:
        SemanticIDCollisionError: naming the largest group's size and prefix when it exceeds ``suffix_size``.
    """
    n = prefix.shape[0]
    if n == 0:
        return prefix.new_zeros((0, prefix.shape[1] + 1))
    _, inverse, counts = torch.unique(prefix, dim=0, return_inverse=True, return_counts=True)
    # Stable sort by group keeps item-id order inside each group.
    order = torch.sort(inverse, stable=True).indices
    sorted_groups = inverse[order]
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(n, device=prefix.device) - starts[sorted_groups]
    suffix = torch.empty_like(rank_sorted)
    suffix[order] = rank_sorted
    big = int(counts.max())
    if big > suffix_size:
        g = int(counts.argmax())
        example = prefix[inverse == g][0].tolist()
        raise SemanticIDCollisionError(
            f"{big} items share the semantic-ID prefix {example}, more than the suffix vocabulary "
            f"({suffix_size}); raise `suffix_size` or the codebook size"
        )
    return torch.cat([prefix, suffix[:, None]], dim=1)


def sid_table_hash(table: torch.Tensor) -> str:
    """Short sha256 of a SID table (to compare tables across ranks, epochs and runs)."""
    return hashlib.sha256(table.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def codebook_stats(sids: torch.Tensor, num_codes: Sequence[int], previous: Optional[torch.Tensor] = None) -> Dict:
    """Codebook health of a SID table (the code-utilisation and collapse diagnostics of DIGER, arXiv 2601.19711).

    Args:
        sids: ``[N, L+1]`` (no pad row) codes; the last column is the suffix.
        num_codes: ``K_l`` per prefix level.
        previous: the previous epoch's table, for the share of changed semantic IDs.

    Returns:
        dict with per-level ``used``, ``dead``, ``counts`` (items per code), ``perplexity`` (exp of usage entropy),
        ``entropy_norm`` (entropy / log K), ``balance`` (1 - sum|n_k - N/K| / 2N); and
        ``collision_rate`` ((N - #unique prefixes)/N), ``max_collision_group``, ``hash``,
        ``changed_frac`` (share of items whose semantic ID changed) when ``previous`` is given.
    """
    n = sids.shape[0]
    levels = []
    for l, k in enumerate(num_codes):
        counts = torch.bincount(sids[:, l], minlength=k).double()
        p = counts / max(n, 1)
        ent = float(-(p[p > 0] * p[p > 0].log()).sum())
        levels.append({
            "level": l + 1,
            "used": int((counts > 0).sum()),
            "dead": int((counts == 0).sum()),
            "perplexity": math.exp(ent),
            "entropy_norm": ent / math.log(k),
            "balance": 1.0 - float((counts - n / k).abs().sum()) / (2 * max(n, 1)),
            "counts": counts.long().tolist(),
        })
    prefix = sids[:, : len(num_codes)]
    uniq, counts = torch.unique(prefix, dim=0, return_counts=True)
    out = {
        "levels": levels,
        "collision_rate": (n - uniq.shape[0]) / max(n, 1),
        "max_collision_group": int(counts.max()) if n else 0,
        "hash": sid_table_hash(sids),
    }
    if previous is not None and previous.shape == sids.shape:
        out["changed_frac"] = float((previous != sids).any(dim=1).float().mean())
        out["changed_prefix_frac"] = float((previous[:, : len(num_codes)] != prefix).any(dim=1).float().mean())
    return out


TOKENIZER_KINDS = ("rqvae", "rqkmeans")


class RQTokenizer(nn.Module):
    """Residual-quantisation tokenizer: ``z = Enc(x)``, ``L`` residual quantisers, ``x^ = Dec(z^)``.

    ``kind="rqvae"`` (DIGER, arXiv 2601.19711, with LETTER's RQ-VAE recipe): MLP encoder/decoder, trained by
    :func:`pretrain_tokenizer`.
    ``kind="rqkmeans"`` (TIGER-style baselines; TIGER: Rajput et al., NeurIPS 2023, arXiv 2305.05065; residual
    k-means semantic IDs as in GRID, ``snap-research/GRID``): identity encoder (``z = x``), the codebooks are the
    residual k-means centroids of ``x`` and are not trained; ``layers`` and ``e_dim`` are ignored.

    Args:
        in_dim: item-embedding dimension ``D``.
        layers: hidden sizes of the encoder MLP (decoder mirrors them).
        e_dim: latent/codebook dimension ``d``.
        num_codes: codebook size per level.
        beta: commitment weight of the VQ loss.

    Shapes: ``x [n, D]`` -> ``z [n, d]``; codes ``[n, L]``.

    Raises:
        ValueError: for an unknown ``kind``.
    """

    def __init__(self, in_dim: int, layers: Sequence[int], e_dim: int, num_codes: Sequence[int], beta: float = 0.25,
                 kind: str = "rqvae") -> None:
        super().__init__()
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {list(TOKENIZER_KINDS)}, got {kind!r}")
        self.kind = kind
        if kind == "rqkmeans":
            e_dim = in_dim
        self.in_dim, self.e_dim = int(in_dim), int(e_dim)
        self.num_codes = [int(k) for k in num_codes]
        sizes = [in_dim, *layers, e_dim]
        self.encoder = mlp(sizes) if kind == "rqvae" else nn.Identity()
        self.decoder = mlp(sizes[::-1]) if kind == "rqvae" else nn.Identity()
        self.quantizers = nn.ModuleList([VectorQuantizer(k, e_dim, beta) for k in self.num_codes])

    @property
    def num_levels(self) -> int:
        return len(self.quantizers)

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor], beta: float = 0.25) -> "RQTokenizer":
        """A tokenizer whose shapes are read off a saved ``state_dict`` (the artifact's ``tokenizer.pt``), loaded.

        ``kind`` is ``rqvae`` when the state holds encoder weights, else ``rqkmeans``; hidden sizes come from
        ``encoder.<2i>.weight``, codebook sizes and ``e_dim`` from ``quantizers.<l>.embedding.weight``.

        Raises:
            ValueError: for a state without codebooks.
        """
        books = sorted((int(k.split(".")[1]), v) for k, v in state.items()
                       if k.startswith("quantizers.") and k.endswith(".embedding.weight"))
        if not books:
            raise ValueError(f"tokenizer state has no codebooks (quantizers.<l>.embedding.weight); keys: {sorted(state)[:6]}")
        num_codes = [int(v.shape[0]) for _, v in books]
        e_dim = int(books[0][1].shape[1])
        enc = sorted((int(k.split(".")[1]), v) for k, v in state.items()
                     if k.startswith("encoder.") and k.endswith(".weight"))
        if enc:
            tok = cls(int(enc[0][1].shape[1]), [int(v.shape[0]) for _, v in enc[:-1]], e_dim, num_codes, beta)
        else:
            tok = cls(e_dim, [], e_dim, num_codes, beta, kind="rqkmeans")
        tok.load_state_dict(state)
        return tok.eval()

    def quantize(self, z: torch.Tensor, *, mode: str = "ste", tau: float = 2.0,
                 decay: Optional[UncertaintyDecay] = None,
                 generator: Optional[torch.Generator] = None, **assign_kw) -> Tuple[List[LevelOut], torch.Tensor]:
        """Residual quantisation of ``z [n, d]``: ``r_{l+1} = r_l - q_l``; returns (levels, ``z^ = sum q_l``).

        ``assign_kw`` (``logit_source``, ``sk_epsilon``, ``sk_iters``) go to :meth:`VectorQuantizer.assign`.
        """
        r = z
        outs = []
        z_hat = torch.zeros_like(z)
        for level, vq in enumerate(self.quantizers):
            out = vq.assign(r, mode=mode, tau=tau, level=level, decay=decay, generator=generator, **assign_kw)
            outs.append(out)
            z_hat = z_hat + out.q
            r = r - out.q
        return outs, z_hat

    def forward(self, x: torch.Tensor, **kw) -> Tuple[torch.Tensor, List[LevelOut], torch.Tensor]:
        """``(z [n, d], levels, z^ [n, d])`` for item embeddings ``x [n, D]``."""
        z = self.encoder(x)
        levels, z_hat = self.quantize(z, **kw)
        return z, levels, z_hat

    def pretrain_loss(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RQ-VAE pre-training loss ``MSE(Dec(z^), x) + mean VQ loss`` with classic STE; returns (total, recon, vq)."""
        z, levels, z_hat = self(x, mode="ste")
        recon = F.mse_loss(self.decoder(z_hat), x)
        vq = torch.stack([lv.vq_loss.mean() for lv in levels]).sum()
        return recon + vq, recon, vq

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, *, niter: int = 20, seed: int = 2020, backend: str = "faiss") -> None:
        """Set every level's codebook to the residual k-means centroids of ``Enc(x)`` (FAISS, full item table)."""
        z = self.encoder(x).cpu().numpy()
        books, _ = residual_kmeans(z, self.num_codes, niter=niter, seed=seed, backend=backend)
        for vq, b in zip(self.quantizers, books):
            vq.embedding.weight.copy_(torch.from_numpy(b))

    @torch.no_grad()
    def get_codes(self, x: torch.Tensor, *, sinkhorn: bool = True, sk_epsilon: float = 0.003, sk_iters: int = 50) -> torch.Tensor:
        """Deterministic ``[n, L]`` codes of the full catalogue ``x [n, D]`` (eval mode, no noise).

        With ``sinkhorn`` each level is a float64 Sinkhorn-balanced assignment over all ``n`` items (as
        ``Trainer.get_code`` in the official DIGER ``trainer.py``); otherwise the argmin-distance code. Runs on one
        thread (:func:`one_thread`), so the codes do not depend on the thread count.
        """
        was_training = self.training
        self.eval()
        try:
            with one_thread():
                r = self.encoder(x)
                codes = []
                for vq in self.quantizers:
                    d = vq.distances(r)
                    c = sinkhorn_assign(d, epsilon=sk_epsilon, iters=sk_iters) if sinkhorn else d.argmin(-1)
                    codes.append(c)
                    r = r - vq.embedding.weight[c]
                return torch.stack(codes, dim=1)
        finally:
            self.train(was_training)


def build_sid_table(prefix: torch.Tensor, suffix_size: int) -> torch.Tensor:
    """``[N+1, L+1]`` SID table from item prefixes ``[N, L]`` (row 0 = pad = -1)."""
    full = add_collision_suffix(prefix, suffix_size)
    pad = torch.full((1, full.shape[1]), -1, dtype=full.dtype, device=full.device)
    return torch.cat([pad, full], dim=0)


@one_thread()
def pretrain_tokenizer(
    tokenizer: RQTokenizer,
    x: torch.Tensor,
    *,
    epochs: int = 500,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    eval_every: int = 50,
    kmeans: str = "faiss",
    kmeans_iters: int = 20,
    seed: int = 2020,
    sinkhorn: bool = True,
    sk_epsilon: float = 0.003,
    sk_iters: int = 50,
    show_progress: bool = False,
) -> Dict:
    """Pre-train the RQ-VAE on item embeddings ``x [N, D]`` in place (recipe of DIGER's official ``scripts/rqvae/``).

    k-means init of every level (unless ``kmeans == "none"``), AdamW with a linear LR decay, and
    the state with the lowest collision rate (ties: lower loss) kept, as in LETTER's ``RQ-VAE/trainer.py``.

    Runs on one torch thread (:func:`one_thread`): the same seed gives the same RQ-VAE on any thread count.

    Returns:
        ``{"best_epoch", "collision_rate", "loss", "history": [...]}``.
    """
    g = torch.Generator().manual_seed(seed)
    if kmeans != "none":
        tokenizer.kmeans_init(x, niter=kmeans_iters, seed=seed, backend=kmeans)
    opt = torch.optim.AdamW(tokenizer.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(0.0, 1.0 - e / max(epochs, 1)))
    n = x.shape[0]
    best = (float("inf"), float("inf"))
    best_state, best_epoch, history = copy.deepcopy(tokenizer.state_dict()), -1, []
    iterator = range(epochs)
    if show_progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="RQ-VAE pre-training", ncols=100)
    for epoch in iterator:
        tokenizer.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss, _, _ = tokenizer.pretrain_loss(x[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % eval_every == 0 or epoch == epochs - 1:
            prefix = tokenizer.get_codes(x, sinkhorn=sinkhorn, sk_epsilon=sk_epsilon, sk_iters=sk_iters)
            rate = (n - torch.unique(prefix, dim=0).shape[0]) / n
            history.append({"epoch": epoch, "loss": total / n, "collision_rate": rate})
            if (rate, total / n) < best:
                best, best_epoch = (rate, total / n), epoch
                best_state = copy.deepcopy(tokenizer.state_dict())
    tokenizer.load_state_dict(best_state)
    tokenizer.zero_grad(set_to_none=True)
    logger.info("RQ-VAE pre-training: best epoch %d, collision rate %.4f, loss %.5f", best_epoch, best[0], best[1])
    return {"best_epoch": best_epoch, "collision_rate": best[0], "loss": best[1], "history": history}
