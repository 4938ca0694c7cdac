"""Residual k-means codebook initialisation with FAISS (``faiss.Kmeans`` per level, on the full item table).

Also the RQ-KMeans tokenizer's core: fit K centroids, assign, subtract, repeat per level. The official DIGER and
ETEGRec code (``vq.py``) instead fits scikit-learn ``KMeans`` lazily on the first training batch of each rank.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np


def kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 2020, backend: str = "faiss") -> Tuple[np.ndarray, np.ndarray]:
    """k-means on the rows of ``x``.

    Args:
        x: ``[n, d]`` float array.
        k: number of centroids (``2 <= k <= n``).
        niter: Lloyd iterations.
        seed: random seed (FAISS ``seed`` / scikit-learn ``random_state``).
        backend: ``"faiss"`` (default) or ``"sklearn"``.

    Returns:
        ``(centroids [k, d] float32, assignment [n] int64)`` with ``assignment[i]`` the nearest centroid.

    Raises:
        ValueError: if ``k < 2``, ``k > n``, ``x`` is not 2-D or not finite, or ``backend`` is unknown.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be [n, d], got shape {x.shape}")
    n, d = x.shape
    if k < 2 or k > n:
        raise ValueError(f"kmeans: need 2 <= k <= n, got k={k}, n={n}")
    if not np.isfinite(x).all():
        raise ValueError("kmeans: x contains NaN or inf")
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
        km.train(x)
        centroids = km.centroids.astype(np.float32).copy()
        _, assign = km.index.search(x, 1)
        return centroids, assign[:, 0].astype(np.int64)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed).fit(x)
        return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)
    raise ValueError(f"kmeans: unknown backend {backend!r}; expected 'faiss' or 'sklearn'")


def residual_kmeans(
    x: np.ndarray, num_codes: List[int], *, niter: int = 20, seed: int = 2020, backend: str = "faiss"
) -> Tuple[List[np.ndarray], np.ndarray]:
    """Residual k-means: level ``l`` clusters the residual left by levels ``< l``.

    Args:
        x: ``[n, d]`` vectors (e.g. the tokenizer's latent ``z`` of every item).
        num_codes: codebook size per level, e.g. ``[256, 256, 256]``.

    Returns:
        ``(codebooks, codes)``: a list of ``[K_l, d]`` centroid arrays and ``[n, L]`` int64 codes.
        Each level's codebook rows are exactly the k-means centroids of that level's residuals.
    """
    residual = np.asarray(x, dtype=np.float32).copy()
    books, codes = [], []
    for level, k in enumerate(num_codes):
        c, a = kmeans(residual, k, niter=niter, seed=seed + level, backend=backend)
        books.append(c)
        codes.append(a)
        residual = residual - c[a]
    return books, np.stack(codes, axis=1)
