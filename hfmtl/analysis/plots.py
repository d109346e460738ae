"""Heatmaps of task x task matrices (gradient cosine, lookahead affinity, transfer gains) as PNG files.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend or figure state is
touched, and it works on a machine without a display). The output is deterministic: a fixed pixel size
(``figsize * dpi``, no tight bounding box) and no PNG metadata that varies (matplotlib's version is left
out), so the same matrix gives the same bytes with the same matplotlib and fonts.

Example:
    >>> heatmap(tracker.mean, tracker.task_names, "outputs/glue/gradient_cosine.png",  # doctest: +SKIP
    ...         title="Gradient cosine (mean over steps)")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import HfmtlError

__all__ = ["default_figsize", "heatmap"]


def default_figsize(num_rows: int, num_cols: int) -> tuple[float, float]:
    """Inches: room for the labels and colour bar plus 0.8 in per cell (what `heatmap` uses by default)."""
    return (2.8 + 0.8 * num_cols, 2.0 + 0.8 * num_rows)


def heatmap(
    matrix: np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    path: str | Path,
    *,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    value_format: str = "{:.2f}",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Write a labelled heatmap of `matrix` with each value printed in its cell.

    Colours are symmetric around 0 by default (``vmin = -vmax = -max|value|``, a diverging map): positive
    (helps, aligned) in red, negative (hurts, conflicting) in blue. NaN cells are grey and marked 'n/a'.

    Args:
        matrix: (rows, cols) values.
        row_labels: one label per row (sources, or tasks of a square matrix).
        path: the PNG to write (parent folders are created).
        col_labels: one label per column; default: `row_labels` (a square task x task matrix).
        title, xlabel, ylabel: texts; the axes are unlabelled if not given.
        value_format: format of the value in each cell.
        vmin, vmax: colour range; default symmetric around 0 (see above).
        cmap: a matplotlib colour map name.
        figsize: inches; default `default_figsize`. The PNG is ``figsize * dpi`` pixels.
        dpi: pixels per inch.

    Returns:
        The path written.

    Raises:
        HfmtlError: matplotlib is not installed.
        ValueError: the labels do not match the matrix's shape.

    Example:
        >>> heatmap([[1.0, -0.2], [-0.2, 1.0]], ["rte", "stsb"], "cos.png", title="Gradient cosine")  # doctest: +SKIP
        PosixPath('cos.png')
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise HfmtlError("heatmaps need matplotlib: pip install matplotlib") from err

    values = np.asarray(matrix, dtype=np.float64)
    col_labels = list(row_labels) if col_labels is None else list(col_labels)
    if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix of shape {values.shape} for {len(row_labels)} row and {len(col_labels)} column labels"
        )
    finite = values[np.isfinite(values)]
    if vmin is None and vmax is None:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        bound = bound or 1.0
        vmin, vmax = -bound, bound
    elif vmin is None or vmax is None:
        raise ValueError("give both vmin and vmax, or neither")

    figure = Figure(figsize=figsize or default_figsize(*values.shape), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.9")  # NaN cells: light grey
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(len(col_labels)), labels=[str(c) for c in col_labels], rotation=45, ha="right")
    axes.set_yticks(range(len(row_labels)), labels=[str(r) for r in row_labels])
    if title:
        axes.set_title(title)
    if xlabel:
        axes.set_xlabel(xlabel)
    if ylabel:
        axes.set_ylabel(ylabel)
    norm = image.norm
    for (i, j), value in np.ndenumerate(values):
        if not np.isfinite(value):
            axes.text(j, i, "n/a", ha="center", va="center", color="0.4", fontsize=8)
            continue
        # dark cells get white text: luminance of the cell's colour
        r, g, b, _ = colormap(norm(value))
        color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
        axes.text(j, i, value_format.format(value), ha="center", va="center", color=color, fontsize=9)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # no Software / date metadata: the bytes depend on the matrix only
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
