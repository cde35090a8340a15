"""Loading verified weights for inference in the pipelines."""

from __future__ import annotations

from pathlib import Path

from models.cards import ModelCard, load_verified
from models.cytact import CytActNet

SHIPPED_CYTACT_WEIGHTS = Path(__file__).parent / "weights" / "cytact-synthetic-v1.pt"


def load_cytact(weights: Path | None) -> tuple[CytActNet, ModelCard]:
    """The CytAct network with weights whose sha256 matches their card (WeightsMismatch otherwise)."""
    state, card = load_verified(weights or SHIPPED_CYTACT_WEIGHTS)
    model = CytActNet()
    model.load_state_dict(state)
    model.eval()
    return model, card
