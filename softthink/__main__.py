"""``python -m softthink ...`` is the ``softthink`` console script."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
