"""DIGER: differentiable semantic IDs for generative recommendation (SIGIR 2026), RecBole-compatible.

Importing ``diger`` (or ``diger.gumbel``) does not import RecBole; the RecBole-facing modules
(``diger.models``, ``diger.trainer``, ``diger.quick_start``) apply :mod:`diger.compat` first.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import diger` stays free of RecBole; `diger.load_recommender` imports it on first use.
    if name in ("load_recommender", "Recommender"):
        from . import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'diger' has no attribute {name!r}")
