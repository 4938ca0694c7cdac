"""Prefix trie over a semantic-ID table, as dense per-level child tables (for constrained beam search)."""
from __future__ import annotations

from typing import List

import torch


class SIDTrie:
    """Dense trie of the semantic IDs of items ``1..N``.

    ``children[j]`` is a ``[num_nodes_j, K_j]`` long tensor: for a node at depth ``j`` (a valid
    prefix of ``j`` codes; depth 0 has the single root node 0) and a code ``c``, the id of the child
    node at depth ``j+1``, or ``-1`` if no item has that prefix. At the last depth the child id is
    the RecBole internal item id. Memory is ``sum_j num_nodes_j * K_j`` longs.

    Args:
        sids: ``[N+1, C]`` SID table (row 0 is padding and ignored); rows must be unique.
        vocab_sizes: ``K_j`` per code position.

    Raises:
        ValueError: if two items share a semantic ID or a code is out of range.
    """

    def __init__(self, sids: torch.Tensor, vocab_sizes: List[int]) -> None:
        codes = sids[1:].long().cpu()
        n, c = codes.shape
        if c != len(vocab_sizes):
            raise ValueError(f"SID table has {c} code positions, expected {len(vocab_sizes)}")
        for j, k in enumerate(vocab_sizes):
            if n and (codes[:, j].min() < 0 or codes[:, j].max() >= k):
                raise ValueError(f"semantic-ID code position {j} out of range [0, {k})")
        self.vocab_sizes = list(vocab_sizes)
        self.children: List[torch.Tensor] = []
        node = torch.zeros(n, dtype=torch.long)  # every item starts at the root
        num_nodes = 1
        for j in range(c):
            table = torch.full((num_nodes, vocab_sizes[j]), -1, dtype=torch.long)
            if j == c - 1:
                child = torch.arange(1, n + 1)
                if n and torch.unique(torch.stack([node, codes[:, j]], 1), dim=0).shape[0] != n:
                    raise ValueError("semantic IDs are not unique: two items share all codes")
                num_next = n
            else:
                _, child = torch.unique(torch.stack([node, codes[:, j]], 1), dim=0, return_inverse=True)
                num_next = int(child.max()) + 1 if n else 0
            table[node, codes[:, j]] = child
            self.children.append(table)
            node, num_nodes = child, num_next
        self.device = torch.device("cpu")

    def to(self, device) -> "SIDTrie":
        self.children = [t.to(device) for t in self.children]
        self.device = torch.device(device)
        return self

    def lookup(self, seqs: torch.Tensor) -> torch.Tensor:
        """Item ids ``[...]`` of full code sequences ``[..., C]``; ``-1`` where no item matches."""
        node = torch.zeros(seqs.shape[:-1], dtype=torch.long, device=seqs.device)
        for j, table in enumerate(self.children):
            ok = node >= 0
            nxt = table[node.clamp_min(0), seqs[..., j].clamp(0, table.shape[1] - 1)]
            node = torch.where(ok, nxt, torch.full_like(node, -1))
        return node
