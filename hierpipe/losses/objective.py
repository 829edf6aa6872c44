"""What a run minimises: its loss, plus a weighted regulariser such as HIER.

The combination and its weight: docs/methods/hier.md.
"""

from __future__ import annotations

from torch import Tensor, nn

from hierpipe.core.validation import check_number


class Objective(nn.Module):
    """`loss(z, y) + weight * regularizer(z, y)`, or the loss alone without a regulariser.

    One module, so that the class proxies and the hierarchical proxies are saved, restored
    and moved together (the released HIER code keeps neither in a checkpoint).
    `last_terms` holds the detached value of each term of the latest forward, for the log.
    """

    def __init__(
        self, loss: nn.Module, regularizer: nn.Module | None = None, weight: float = 0.5
    ) -> None:
        super().__init__()
        self.loss = loss
        self.regularizer = regularizer
        self.weight = check_number("weight", weight, positive=True)
        self.last_terms: dict[str, float] = {}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        value = self.loss(embeddings, labels)
        if self.regularizer is None:
            return value
        term = self.regularizer(embeddings, labels)
        self.last_terms = {"loss": value.item(), "regularizer": term.item()}
        return value + self.weight * term

    @property
    def classifies(self) -> bool:
        """Whether the loss has a classifier (`logits`), which then validates the run."""
        return hasattr(self.loss, "logits")

    def extra_repr(self) -> str:
        return "" if self.regularizer is None else f"weight={self.weight:g}"
