"""Which way is better for each measure `<group>/<kind>/<name>` that evaluation writes.

Tables mark the best value per column and comparisons say which side won; both need to know
whether a measure is a score, a cost, or neither (p-values, counts).
"""

from __future__ import annotations

from typing import Literal

Direction = Literal[1, -1, 0]

# Costs: lower is better (proxydr.md 6: AHC, AHD@k, calibration errors, mistake severity;
# Robinson-Foulds distances).
_COSTS = ("ahc", "ece", "mce", "mistake_severity", "rf", "norm_rf", "induced_rf", "induced_norm_rf")
_COST_PREFIXES = ("ahd@",)
# Not scores: p-values of correlations, counts, and the depth AHS was averaged over.
_NOT_SCORES = ("num_classes", "induced_internal_nodes", "ahs_k")
# Measures of random vectors: the chance level beside each model, not the model's score.
_CHANCE = "/random_vectors/"


def direction(measure: str) -> Direction:
    """+1 when higher is better, -1 when lower is better, 0 when the value is not a score."""
    name = measure.rsplit("/", 1)[-1]
    if name in _NOT_SCORES or name.endswith("_p") or _CHANCE in measure:
        return 0
    if name in _COSTS or name.startswith(_COST_PREFIXES):
        return -1
    return 1
