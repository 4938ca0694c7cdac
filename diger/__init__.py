"""DIGER: differentiable semantic IDs for generative recommendation (SIGIR 2026), RecBole-compatible.

Importing ``diger`` (or ``diger.gumbel``) does not import RecBole; the RecBole-facing modules
(``diger.models``, ``diger.trainer``, ``diger.quick_start``) apply :mod:`diger.compat` first.
"""
__version__ = "0.1.0"
