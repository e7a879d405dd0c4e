"""Where align keeps things — the package, its shipped data, the cache for converted models — and how a finished
file or folder gets there: written beside its place and renamed into it (`write_atomic`, `move_into_place`), so a
reader sees the old content or the new one, never half of either. A core utility: it imports nothing of the project."""

from __future__ import annotations

import os
import shutil
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


def write_atomic(path: Path, content: str | bytes) -> Path:
    """Write `content` (text as UTF-8) through a temporary file beside `path`, renamed into place; returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
    return path


def move_into_place(source: Path, target: Path) -> Path:
    """Rename the finished folder (or file) `source` to `target`, replacing an older one there: the old one is renamed
    aside first and removed once the new one is in place. `source` and `target` must be on one file system."""
    source, target = Path(source), Path(target)
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        _remove(aside)
        os.replace(target, aside)
    os.replace(source, target)
    _remove(aside)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
