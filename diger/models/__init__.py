"""RecBole models of this package: :class:`TIGER` and :class:`DIGER`, plus the :class:`SASRecBCE` baseline."""
from .. import compat  # noqa: F401
from .baselines import BASELINES, SASRecBCE
from .diger import DIGER
from .tiger import TIGER, SemanticIDRecommender

MODELS = {"TIGER": TIGER, "DIGER": DIGER}

__all__ = ["DIGER", "TIGER", "SemanticIDRecommender", "MODELS", "SASRecBCE", "BASELINES"]
