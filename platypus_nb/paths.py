"""Where things live: the project tree, the vendored data and the asset cache.

The cache location is the one environment switch the package reads (``PLATYPUS_NB_CACHE``), because converted
models are large and users want them outside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"
DATA_DIR = PROJECT_ROOT / "data"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def cache_dir() -> Path:
    """The asset cache: converted models, embedding caches. Created on first use."""
    root = Path(os.environ.get("PLATYPUS_NB_CACHE", Path.home() / ".cache" / "platypus_nb")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
