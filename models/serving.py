"""Loading verified weights for inference in the pipelines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.cards import SHIPPED_CYTACT_WEIGHTS, ModelCard, load_verified
from models.cytact import CytActNet
from models.errors import ModelError
from models.expression_transformer import ExpressionTransformer, TransformerSettings
from models.fusion import FusionSettings, new_model

CPU = torch.device("cpu")


def load_cytact(weights: Path | None, device: torch.device = CPU) -> tuple[CytActNet, ModelCard]:
    """The CytAct network with weights whose sha256 matches their card (WeightsMismatch otherwise), on `device`."""
    state, card = load_verified(weights or SHIPPED_CYTACT_WEIGHTS)
    model = CytActNet()
    model.load_state_dict(state)
    model.eval()
    return model.to(device), card


def load_expression(
    weights: Path, device: torch.device = CPU
) -> tuple[ExpressionTransformer, tuple[str, ...], ModelCard]:
    """The expression transformer (on `device`), the panel genes it was trained on (in input order) and its
    card."""
    state, card = load_verified(weights)
    try:
        settings = TransformerSettings(**card.parameters["transformer"])
        genes = tuple(card.parameters["genes"])
        model = ExpressionTransformer(len(genes), settings)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"{weights}: not expression-transformer weights ({error})") from None
    model.eval()
    return model.to(device), genes, card


def _built(
    weights: Path, what: str, build: Callable[[ModelCard], nn.Module], device: torch.device = CPU
) -> tuple[nn.Module, ModelCard]:
    """Verified weights loaded into the network `build` makes from their card, in evaluation mode, on `device`."""
    state, card = load_verified(weights)
    try:
        model = build(card)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelError(f"{weights}: not {what} weights ({error})") from None
    model.eval()
    return model.to(device), card


def load_fusion(weights: Path) -> tuple[nn.Module, ModelCard]:
    """The fusion model (attention or concatenation ablation) and its card."""

    def build(card: ModelCard) -> nn.Module:
        parameters = card.parameters
        return new_model(parameters["kind"], dict(parameters["dims"]), FusionSettings(**parameters["settings"]))

    return _built(weights, "fusion", build)


def load_histology_encoder(weights: Path, device: torch.device = CPU) -> tuple[nn.Module, ModelCard]:
    """The patch encoder (ResNet-50 of the base width on its card) on `device`, and its card."""
    from models.histology import ResNetEncoder

    return _built(
        weights,
        "histology patch-encoder",
        lambda card: ResNetEncoder(int(card.parameters["encoder"]["base_width"])),
        device,
    )


def load_histology_mil(weights: Path, device: torch.device = CPU) -> tuple[nn.Module, ModelCard]:
    """The gated-attention MIL pooling on `device`, and its card (which names the encoder it was trained on)."""
    from models.histology import GatedAttentionMIL, MilSettings

    def build(card: ModelCard) -> nn.Module:
        return GatedAttentionMIL(int(card.parameters["feature_dim"]), MilSettings(**card.parameters["mil"]))

    return _built(weights, "histology MIL", build, device)
