"""Saving figures: PNG under the project's ``figures/`` (what README.md shows) and beside the stage's outputs."""

from __future__ import annotations

from pathlib import Path

from platypus_nb.io import atomic_path


def save_figure(fig, name: str, figures_dir: Path, stage_dir: Path | None = None, dpi: int = 120) -> Path:
    """Write ``<figures_dir>/<name>.png`` (and a copy in ``<stage_dir>/figures/``) atomically; return the first."""
    targets = [Path(figures_dir) / f"{name}.png"]
    if stage_dir is not None:
        targets.append(Path(stage_dir) / "figures" / f"{name}.png")
    for target in targets:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return targets[0]
