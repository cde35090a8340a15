"""Weights with model cards: name, version, training data, metrics, parameters and the sha256 of the
weights file. The node refuses weights whose hash does not match their card."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.errors import ModelError, WeightsMismatch


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    synthetic_training_data: bool
    training_data: str
    intended_use: str
    metrics: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    weights_file: str = ""  # relative to the card's folder; both filled in by `save_weights`
    sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


SHIPPED_CYTACT_WEIGHTS = Path(__file__).parent / "weights" / "cytact-synthetic-v1.pt"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(state_dict: dict, weights_path: Path, card: ModelCard) -> ModelCard:
    """Write the weights and their card (`<weights>.card.json`) with the weights' sha256 filled in."""
    import torch  # only where weights are written or loaded: the node's own process never needs it

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path.write_bytes(buffer.getvalue())
    final = ModelCard(**{**asdict(card), "weights_file": weights_path.name, "sha256": sha256_file(weights_path)})
    card_path(weights_path).write_text(final.to_json())
    return final


def card_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.name + ".card.json")


def load_card(path: Path) -> ModelCard:
    try:
        return ModelCard(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise ModelError(f"model card {path} cannot be read: {error}") from None


def verify_card(weights_path: Path) -> ModelCard:
    """The card of weights whose sha256 matches it; raises WeightsMismatch or ModelError (no PyTorch needed)."""
    weights_path = Path(weights_path)
    card = load_card(card_path(weights_path))
    if not weights_path.exists():
        raise ModelError(f"weights file {weights_path} is missing")
    actual = sha256_file(weights_path)
    if actual != card.sha256:
        raise WeightsMismatch(
            f"weights {weights_path.name} have sha256 {actual[:16]}…, their card says {card.sha256[:16]}…: refused"
        )
    return card


def load_verified(weights_path: Path) -> tuple[dict, ModelCard]:
    """The state dict and card of verified weights; raises WeightsMismatch or ModelError."""
    import torch

    card = verify_card(weights_path)
    state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    return state, card
