"""Data recipes: public raw dataset files -> RecBole atomic files with item text.

Entry points:

* :func:`diger.data.prepare.prepare` (CLI ``diger data prepare``) writes ``NAME.inter``,
  ``NAME.item``, ``NAME.yaml``, ``stats.json`` and published semantic IDs;
* :func:`diger.data.semantic_ids.load_letter_index` turns a LETTER ``*.index.json`` into a fixed
  SID table aligned with RecBole's internal item ids;
* :func:`diger.data.prepared.require_item_text` locates the item text of a prepared dataset, raising
  :class:`~diger.data.errors.MissingItemTextError` when it has none.

Recipes live in the repository's ``datasets/`` folder (YAML, read with ``yaml.safe_load``).
Nothing here imports RecBole.
"""
from .errors import (  # noqa: F401
    DataError, DataFormatError, MissingInputError, MissingItemTextError, PickleNotAllowedError, RecipeError,
)
