"""The questions params ask under `comparisons:` and their `statistics:` settings.

Read and checked when Snakemake parses the workflow, so this module needs neither numpy nor
torch; `hierpipe.reporting.comparisons` answers the questions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hierpipe.core import catalog
from hierpipe.core.catalog import CORRECTIONS
from hierpipe.core.errors import HierpipeError

# Measured by default, when a question names no measures: what each study reports first.
DEFAULT_MEASURES = (
    "classification/logits/top1",
    "retrieval/recall@1",
    "retrieval/map@r",
    "retrieval/ahs",
    "retrieval/h_ap",
    "hierarchy/proxy/classwise_spearman",
    "hierarchy/prototype/classwise_spearman",
    "hierarchy/prototype/elementwise_spearman",
)


@dataclass(frozen=True)
class Question:
    name: str
    treatment: Mapping[str, tuple[str, ...]]
    control: Mapping[str, str]
    measures: tuple[str, ...] = DEFAULT_MEASURES


@dataclass(frozen=True)
class StatisticsSettings:
    confidence: float = 0.95
    correction: str = "holm"


def statistics_settings(params: Mapping[str, Any]) -> StatisticsSettings:
    settings = StatisticsSettings(**params.get("statistics", {}))
    if settings.correction not in CORRECTIONS:
        raise HierpipeError(
            f"params: statistics.correction {settings.correction!r} is unknown; expected one "
            f"of {', '.join(CORRECTIONS)}"
        )
    return settings


def questions_from_params(params: Mapping[str, Any]) -> list[Question]:
    """The `comparisons:` entries of params, checked against the models and option sets."""
    known = {"model": set(params.get("models", {})), "option": _option_sets(params)}
    questions = []
    for index, entry in enumerate(params.get("comparisons", [])):
        where = f"params: comparisons[{index}] ({entry.get('name', '?')!r})"
        treatment = {
            key: (value,) if isinstance(value, str) else tuple(value)
            for key, value in entry.get("treatment", {}).items()
        }
        control = dict(entry["control"])
        for side, selector in (("treatment", treatment), ("control", control)):
            for key, values in selector.items():
                values = (values,) if isinstance(values, str) else values
                unknown = sorted(set(values) - known[key])
                if unknown:
                    raise HierpipeError(
                        f"{where}: {side}.{key} names {unknown}, which params do not define "
                        f"(defined: {sorted(known[key])})"
                    )
        measures = tuple(entry.get("measures", DEFAULT_MEASURES))
        for measure in measures:
            try:
                catalog.measure_key(measure)
            except HierpipeError as error:
                raise HierpipeError(f"{where}: measures: {error}") from None
        questions.append(Question(entry["name"], treatment, control, measures))
    names = [q.name for q in questions]
    if len(set(names)) != len(names):
        raise HierpipeError(f"params: comparisons: question names must be unique, got {names}")
    return questions


def _option_sets(params: Mapping[str, Any]) -> set[str]:
    return {"standard", *params.get("options", {})}
