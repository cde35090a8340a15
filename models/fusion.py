"""Attention-based late fusion of histology, genomic and clinical embeddings (the multimodal ICI-response method),
with the PET CytAct embedding as an optional fourth modality.

Each modality is standardised, projected to a common width with tanh, and scored by one scoring layer shared
across modalities (Linear(width, 1), as described); a softmax over the modalities present gives the patient's
modality weights (a missing modality is masked out of the softmax with -inf, never zero-filled); the weighted
sum goes through a classifier with a 64-unit hidden layer and a sigmoid; binary cross-entropy. The clinical
modality first passes an MLP over its variables.

`ConcatFusion` is the ablation: the projected modalities are concatenated (a missing modality can only be
zeroed there, with a presence indicator) instead of attention-weighted.

Documented choices: width 32; early stopping on the validation loss (patience 30 epochs); unknown clinical
values are imputed with the training medians; standardisation statistics are buffers of the model, so the
weights' sha256 covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.training import balanced_rows

# histology: the whole-slide image's gated-attention MIL embedding (the published imaging arm); imaging: the PET
# CytAct lesion embedding (not in the published method: an optional fourth modality).
MODALITIES = ("histology", "imaging", "genomic", "clinical")


@dataclass(frozen=True)
class FusionSettings:
    width: int = 32
    clinical_hidden: int = 16
    classifier_hidden: int = 64
    dropout: float = 0.1
    epochs: int = 300
    patience: int = 30
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


class _Standardise(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("fill", torch.zeros(dim))  # imputed for NaN (training medians)

    def fit(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        fill = np.nan_to_num(np.nanmedian(values, axis=0), nan=0.0)
        filled = np.where(np.isnan(values), fill, values)
        self.fill.copy_(torch.from_numpy(fill.astype(np.float32)))
        self.mean.copy_(torch.from_numpy(filled.mean(axis=0).astype(np.float32)))
        self.scale.copy_(torch.from_numpy(np.maximum(filled.std(axis=0), 1e-6).astype(np.float32)))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.where(torch.isnan(values), self.fill.expand_as(values), values)
        return (values - self.mean) / self.scale


class _Encoders(nn.Module):
    def __init__(self, dims: dict[str, int], settings: FusionSettings) -> None:
        super().__init__()
        self.standardise = nn.ModuleDict({m: _Standardise(d) for m, d in dims.items()})
        projections = {}
        for modality, dim in dims.items():
            if modality == "clinical":
                projections[modality] = nn.Sequential(
                    nn.Linear(dim, settings.clinical_hidden),
                    nn.ReLU(),
                    nn.Linear(settings.clinical_hidden, settings.width),
                    nn.Tanh(),
                )
            else:
                projections[modality] = nn.Sequential(nn.Linear(dim, settings.width), nn.Tanh())
        self.project = nn.ModuleDict(projections)
        self.modalities = tuple(dims)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[patients, modalities, width]."""
        return torch.stack([self.project[m](self.standardise[m](inputs[m])) for m in self.modalities], dim=1)


class AttentionFusion(nn.Module):
    def __init__(self, dims: dict[str, int], settings: FusionSettings = FusionSettings()) -> None:
        super().__init__()
        self.encoders = _Encoders(dims, settings)
        self.score = nn.Linear(settings.width, 1)  # one scoring layer for every modality
        self.classifier = nn.Sequential(
            nn.Linear(settings.width, settings.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(settings.dropout),
            nn.Linear(settings.classifier_hidden, 1),
        )

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit [patients], modality weights [patients, modalities]); rows need one modality present."""
        projected = self.encoders(inputs)
        scores = self.score(projected).squeeze(-1)  # [patients, modalities]
        weights = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)
        fused = (weights.unsqueeze(-1) * projected).sum(dim=1)
        return self.classifier(fused).squeeze(-1), weights


class ConcatFusion(nn.Module):
    """Ablation: concatenation instead of attention (missing modalities zeroed, presence flags appended)."""

    def __init__(self, dims: dict[str, int], settings: FusionSettings = FusionSettings()) -> None:
        super().__init__()
        self.encoders = _Encoders(dims, settings)
        width = settings.width * len(dims) + len(dims)
        self.classifier = nn.Sequential(
            nn.Linear(width, settings.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(settings.dropout),
            nn.Linear(settings.classifier_hidden, 1),
        )

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.encoders(inputs) * present.unsqueeze(-1)
        flat = torch.cat([projected.flatten(1), present.float()], dim=1)
        return self.classifier(flat).squeeze(-1), present.float() / present.float().sum(1, keepdim=True)


@dataclass(frozen=True, eq=False)
class FusionData:
    """Per-patient modality inputs; rows of a missing modality hold NaN and are flagged absent in `present`."""

    inputs: dict[str, np.ndarray]  # modality → [patients, dim]
    present: np.ndarray  # bool [patients, modalities], in MODALITIES order
    labels: np.ndarray | None = None

    def rows(self, index: np.ndarray) -> FusionData:
        return FusionData(
            {m: v[index] for m, v in self.inputs.items()},
            self.present[index],
            None if self.labels is None else self.labels[index],
        )

    def tensors(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # Rows of an absent modality are fed as zeros; the mask (attention) or the zeroing (concat) removes them.
        # NaN inside a present row (an unknown clinical value) stays for the imputation.
        inputs = {}
        for i, (modality, values) in enumerate(self.inputs.items()):
            values = values.astype(np.float32).copy()
            values[~self.present[:, i]] = 0.0
            inputs[modality] = torch.from_numpy(values)
        return inputs, torch.from_numpy(self.present)


def new_model(kind: str, dims: dict[str, int], settings: FusionSettings) -> nn.Module:
    if kind == "attention":
        return AttentionFusion(dims, settings)
    if kind == "concat":
        return ConcatFusion(dims, settings)
    raise ValueError(f"unknown fusion kind {kind!r}")


def train_fusion(
    train: FusionData, validation: FusionData, kind: str = "attention", settings: FusionSettings = FusionSettings()
) -> nn.Module:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    dims = {m: v.shape[1] for m, v in train.inputs.items()}
    model = new_model(kind, dims, settings)
    for i, (modality, values) in enumerate(train.inputs.items()):
        model.encoders.standardise[modality].fit(values[train.present[:, i]])
    balanced = train.rows(balanced_rows(train.labels, rng))
    inputs, present = balanced.tensors()
    labels = torch.from_numpy(balanced.labels.astype(np.float32))
    val_inputs, val_present = validation.tensors()
    val_labels = torch.from_numpy(validation.labels.astype(np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_function = nn.BCEWithLogitsLoss()
    best_loss, best_state, since_best = float("inf"), None, 0
    for _ in range(settings.epochs):
        model.train()
        optimiser.zero_grad()
        logits, _ = model(inputs, present)
        loss_function(logits, labels).backward()
        optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_function(model(val_inputs, val_present)[0], val_labels))
        if val_loss < best_loss - 1e-4:
            best_loss, since_best = val_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


def predict(model: nn.Module, data: FusionData) -> tuple[np.ndarray, np.ndarray]:
    """(responder probability [patients], modality weights [patients, modalities])."""
    model.eval()
    inputs, present = data.tensors()
    with torch.no_grad():
        logits, weights = model(inputs, present)
    return torch.sigmoid(logits).numpy(), weights.numpy()
