"""Where align keeps things: the package, its shipped data, and the cache for converted models."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# align.data is the repository's data/ folder (mapped by the editable install) or align/data inside the wheel.
DATA_DIR = Path(str(files("align.data")))
RECIPES_DIR = PACKAGE_DIR / "recipes"
TEMPLATES_DIR = PACKAGE_DIR / "templates"


def cache_dir(*parts: str) -> Path:
    """align's cache (converted models, the offline toxicity scorer): $ALIGN_CACHE or ~/.cache/align."""
    root = Path(os.environ.get("ALIGN_CACHE") or Path.home() / ".cache" / "align")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
