"""RecBole models of this package: :class:`TIGER` and :class:`DIGER`."""
from .. import compat  # noqa: F401
from .diger import DIGER
from .tiger import TIGER, SemanticIDRecommender

MODELS = {"TIGER": TIGER, "DIGER": DIGER}

__all__ = ["DIGER", "TIGER", "SemanticIDRecommender", "MODELS"]
