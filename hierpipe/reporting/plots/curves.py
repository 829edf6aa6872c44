"""Line plots in side-by-side panels, and the three kinds of panel the figures draw: HS@k over
k, a retrieval measure over the embedding dimension, and training curves over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, StrMethodFormatter

from hierpipe.core.errors import HierpipeError
from hierpipe.reporting.plots.canvas import new_figure

XSCALES = ("linear", "log", "log2")
_PANEL_SIZE = (4.2, 3.4)  # inches per panel
_LEGEND_WIDTH = 1.8  # inches added to a panel whose legend sits outside it
_MAX_INSIDE_LEGEND = 6  # more series than this and the legend moves out of the axes
_MAX_COLUMNS = 4  # panels per row before wrapping, so many training columns stay legible
_LOG_SPAN = 20  # HS@k uses a log x scale once max k / min k reaches this

# Training-log columns that are the x axis or bookkeeping rather than something learnt.
_NOT_CURVES = frozenset({"epoch", "step"})
_TIME_WORDS = frozenset({"time", "seconds", "duration", "elapsed"})


@dataclass(frozen=True)
class Series:
    """One line: ``y`` over ``x`` (1-D, equal length); non-finite points are skipped."""

    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Panel:
    """One axes; ``xscale`` is one of XSCALES ("log2": a log scale with base 2)."""

    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series]
    xscale: str = "linear"


def _finite_points(panel: Panel, series: Series) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``series`` where both x and y are finite, after checking its shape."""
    x, y = np.asarray(series.x, dtype=np.float64), np.asarray(series.y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise HierpipeError(
            f"panel {panel.title!r}, series {series.label!r}: expected 1-D x and y of equal "
            f"length, got shapes {x.shape} and {y.shape}"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if panel.xscale != "linear" and (x <= 0).any():
        raise HierpipeError(
            f"panel {panel.title!r}, series {series.label!r}: expected x > 0 on a "
            f"{panel.xscale} x scale, got {x.min():g}"
        )
    return x, y


def _drawn_series(panel: Panel) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x, y) of each series with a finite point; an error if there is none."""
    if panel.xscale not in XSCALES:
        raise HierpipeError(
            f"panel {panel.title!r}: unknown xscale {panel.xscale!r}, "
            f"expected one of {', '.join(XSCALES)}"
        )
    drawn = [(s.label, *_finite_points(panel, s)) for s in panel.series]
    drawn = [(label, x, y) for label, x, y in drawn if len(x)]
    if not drawn:
        raise HierpipeError(
            f"panel {panel.title!r}: expected at least one series with a finite point, got none"
        )
    return drawn


def draw_line_panels(panels: Sequence[Panel], *, title: str) -> Figure:
    """The panels side by side (wrapping after four), a line with markers per series.

    Non-finite points are skipped and a series without any is left out of its panel. A label
    keeps its colour in every panel. Each panel has a grid and its own legend, outside on the
    right when it lists more than six series.
    """
    if not panels:
        raise HierpipeError("panels: expected at least one panel, got none")
    drawn = [_drawn_series(panel) for panel in panels]
    labels = list(dict.fromkeys(label for lines in drawn for label, _, _ in lines))
    palette = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    colours = {label: palette(i % palette.N) for i, label in enumerate(labels)}

    columns = min(len(panels), _MAX_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    outside = any(len(lines) > _MAX_INSIDE_LEGEND for lines in drawn)
    width, height = _PANEL_SIZE
    figure = new_figure(columns * (width + _LEGEND_WIDTH * outside), rows * height + 0.4)
    figure.suptitle(title)
    for index, (panel, lines) in enumerate(zip(panels, drawn, strict=True)):
        axes = figure.add_subplot(rows, columns, index + 1)
        for label, x, y in lines:
            axes.plot(x, y, marker="o", markersize=3, label=label, color=colours[label])
        if panel.xscale != "linear":
            axes.set_xscale("log", base=2 if panel.xscale == "log2" else 10)
            # plain numbers (1, 10, 100 / 64, 128) read better than powers for k and dims
            axes.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_title(panel.title)
        axes.set_xlabel(panel.xlabel)
        axes.set_ylabel(panel.ylabel)
        axes.grid(True, alpha=0.3)
        if len(lines) > _MAX_INSIDE_LEGEND:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
        else:
            axes.legend(fontsize="small")
    return figure


def _series_by_model(values_by_model: Mapping[str, Mapping[int, float]], name: str) -> list[Series]:
    """One series per model of its values over the sorted integer keys."""
    if not values_by_model:
        raise HierpipeError(f"{name}: expected at least one model, got none")
    series = []
    for model, values in values_by_model.items():
        keys = sorted(values)
        y = [values[key] for key in keys]
        series.append(Series(model, np.array(keys, dtype=np.float64), np.array(y, np.float64)))
    return series


def hs_curve_panel(hs_by_model: Mapping[str, Mapping[int, float]]) -> Panel:
    """HS@k over k per model, on a log k axis once the largest k is 20x the smallest."""
    series = _series_by_model(hs_by_model, "hs_by_model")
    ks = np.concatenate([s.x for s in series])
    wide = len(ks) > 0 and ks.min() > 0 and ks.max() / ks.min() >= _LOG_SPAN
    return Panel("HS@k", "k (neighbours)", "HS@k", series, "log" if wide else "linear")


def dimension_panel(
    recall_by_model: Mapping[str, Mapping[int, float]], measure_label: str = "R@1"
) -> Panel:
    """``measure_label`` over the embedding dimension per model, on a base-2 log axis."""
    series = _series_by_model(recall_by_model, "recall_by_model")
    return Panel(
        f"{measure_label} by embedding dimension",
        "embedding dimension",
        measure_label,
        series,
        "log2",
    )


def _is_curve(name: object, column: pd.Series) -> bool:
    """A training-log column worth a panel: numeric, not epoch/step or a timing."""
    if not isinstance(name, str) or name in _NOT_CURVES:
        return False
    if _TIME_WORDS.intersection(name.lower().split("_")):
        return False
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def training_panels(logs: Mapping[str, pd.DataFrame]) -> list[Panel]:
    """One panel per training-log column over epochs, with a series per log (e.g. per seed).

    A column gets a panel when it is numeric, is not ``epoch``/``step`` or a timing (a name
    with a ``time``, ``seconds``, ``duration`` or ``elapsed`` word), and has a finite value in
    some log: train_loss, the validation score (all NaN when validation is off, so then no
    panel), regulariser terms and counts, a learnt scale. Panels follow the columns' first
    appearance across the logs; a log without a column has no series in that panel.
    """
    if not logs:
        raise HierpipeError("logs: expected at least one training log, got none")
    for label, frame in logs.items():
        if "epoch" not in frame.columns:
            raise HierpipeError(
                f"logs[{label!r}]: expected an 'epoch' column, got {list(frame.columns)}"
            )
    columns = dict.fromkeys(c for frame in logs.values() for c in frame.columns)
    panels = []
    for column in columns:
        series = [
            Series(label, frame["epoch"].to_numpy(np.float64), frame[column].to_numpy(np.float64))
            for label, frame in logs.items()
            if column in frame.columns and _is_curve(column, frame[column])
        ]
        if any(np.isfinite(s.y).any() for s in series):
            panels.append(Panel(column, "epoch", column, series))
    if not panels:
        raise HierpipeError(
            "logs: expected a numeric column besides epoch, step and timings with a finite "
            "value, found none"
        )
    return panels
