"""Histology arm of the multimodal ICI-response method: a ResNet-50 patch encoder and gated-attention
multiple-instance pooling (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance learning")
of a slide's patch features into one slide embedding, the per-patch attention kept for a heatmap.

The method encodes patches with an ImageNet-pretrained ResNet-50 (frozen, 2048-D pooled features). ImageNet
weights cannot be fetched at run time here and no package on the registries ships them inside under a licence
that allows it, so the encoder's weights are trained by the site (`immunode train histology`): SimCLR-style
self-supervised contrastive learning (Chen et al. 2020, NT-Xent loss, temperature 0.1) on patches of its own
stored slides. Such weights are labelled as what they are on their card ("self-supervised on N slides of this
site", or SYNTHETIC); they are never presented as ImageNet weights.

Documented choices: the ResNet-50 is the standard bottleneck network (3, 4, 6, 3 blocks) whose base width is a
parameter (64 is ResNet-50; the tests train narrower ones in seconds); attention sizes M = 512, L = 128
(Ilse et al. use 500/128); patch features are standardised with the training bags' statistics, stored as
buffers so the weights' sha256 covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.device import model_device
from models.training import balanced_rows

RESNET50_BLOCKS = (3, 4, 6, 3)


@dataclass(frozen=True)
class EncoderSettings:
    base_width: int = 64  # 64: ResNet-50 (2048-D features)
    patch_size: int = 256
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    temperature: float = 0.1
    projection_dim: int = 128
    seed: int = 0


@dataclass(frozen=True)
class MilSettings:
    embedding_dim: int = 512  # M
    attention_dim: int = 128  # L
    dropout: float = 0.25
    epochs: int = 60
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    seed: int = 0


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        outputs = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and inputs == outputs
            else nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """ResNet-50 (He et al. 2016) without its classifier: RGB patch [N, 3, H, W] in 0..1 → pooled features."""

    def __init__(self, base_width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers, inputs = [], base_width
        for stage, blocks in enumerate(RESNET50_BLOCKS):
            width = base_width * 2**stage
            for block in range(blocks):
                layers.append(_Bottleneck(inputs, width, 2 if block == 0 and stage > 0 else 1))
                inputs = width * _Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.dim = inputs
        # Per-channel normalisation of the input (0.5 ± 0.25): no dataset statistics are claimed.
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("scale", torch.full((1, 3, 1, 1), 0.25))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem((patches - self.mean) / self.scale))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_patches(encoder: ResNetEncoder, patches: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 RGB patches [N, H, W, 3] → features [N, dim] (evaluation mode, no gradients), on the device the
    encoder is on (the patches go there as bytes, a quarter of their size as floats)."""
    encoder.eval()
    device = model_device(encoder)
    out = []
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size])).to(device)
            out.append(encoder(batch.permute(0, 3, 1, 2).float() / 255.0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


# --- self-supervised training of the encoder (SimCLR) ---------------------------------------------------------


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (50-100 % of the side), flips, 90° rotations, brightness/contrast/saturation
    jitter and a light stain-like hue shift: views of one patch that should map close together."""
    n, _, h, w = batch.shape
    views = []
    for i in range(n):
        image = batch[i]
        side = int(h * (0.5 + 0.5 * float(torch.rand(1, generator=generator))))
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        image = F.interpolate(
            image[None, :, top : top + side, left : left + side], size=(h, w), mode="bilinear", align_corners=False
        )[0]
        if float(torch.rand(1, generator=generator)) < 0.5:
            image = image.flip(2)
        image = torch.rot90(image, int(torch.randint(0, 4, (1,), generator=generator)), (1, 2))
        brightness = 1 + 0.4 * (float(torch.rand(1, generator=generator)) - 0.5)
        contrast = 1 + 0.4 * (float(torch.rand(1, generator=generator)) - 0.5)
        saturation = 1 + 0.4 * (float(torch.rand(1, generator=generator)) - 0.5)
        grey = image.mean(0, keepdim=True)
        image = grey + (image - grey) * saturation
        image = (image - image.mean()) * contrast + image.mean()
        image = image * brightness + 0.05 * (torch.rand(3, 1, 1, generator=generator) - 0.5)
        views.append(image.clamp(0, 1))
    return torch.stack(views)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy over 2N views (each view's positive: its pair)."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / temperature
    n = len(first)
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, targets)


def train_encoder(patches: np.ndarray, settings: EncoderSettings) -> tuple[ResNetEncoder, list[float]]:
    """Self-supervised training on uint8 patches [N, H, W, 3]; returns the encoder and the loss per epoch."""
    if len(patches) < 4:
        raise ValueError(f"{len(patches)} patches: at least 4 are needed for contrastive training")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    encoder = ResNetEncoder(settings.base_width)
    projection = nn.Sequential(
        nn.Linear(encoder.dim, encoder.dim), nn.ReLU(), nn.Linear(encoder.dim, settings.projection_dim)
    )
    optimiser = torch.optim.Adam(
        list(encoder.parameters()) + list(projection.parameters()), lr=settings.learning_rate, weight_decay=1e-6
    )
    losses = []
    batch_size = max(2, min(settings.batch_size, len(patches)))
    for _ in range(settings.epochs):
        encoder.train()
        order = rng.permutation(len(patches))
        total, batches = 0.0, 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = torch.from_numpy(patches[order[start : start + batch_size]]).float().permute(0, 3, 1, 2) / 255.0
            first = projection(encoder(_augment(batch, generator)))
            second = projection(encoder(_augment(batch, generator)))
            loss = nt_xent(first, second, settings.temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    encoder.eval()
    return encoder, losses


# --- gated-attention multiple-instance pooling ----------------------------------------------------------------


class GatedAttentionMIL(nn.Module):
    """Ilse et al. 2018, gated attention: h_k = ReLU(W x_k); a_k = softmax_k(w^T (tanh(V h_k) ⊙ sigm(U h_k)));
    slide embedding z = Σ a_k h_k; response logit = c^T z + b."""

    def __init__(self, feature_dim: int, settings: MilSettings = MilSettings()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        self.embed = nn.Sequential(
            nn.Linear(feature_dim, settings.embedding_dim), nn.ReLU(), nn.Dropout(settings.dropout)
        )
        self.attention_v = nn.Linear(settings.embedding_dim, settings.attention_dim)
        self.attention_u = nn.Linear(settings.embedding_dim, settings.attention_dim)
        self.attention_w = nn.Linear(settings.attention_dim, 1)
        self.classifier = nn.Linear(settings.embedding_dim, 1)
        self.feature_dim = feature_dim
        self.embedding_dim = settings.embedding_dim

    def fit_standardisation(self, bags: list[np.ndarray]) -> None:
        stacked = np.concatenate(bags)
        self.mean.copy_(torch.from_numpy(stacked.mean(0).astype(np.float32)))
        self.scale.copy_(torch.from_numpy(np.maximum(stacked.std(0), 1e-6).astype(np.float32)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One bag [K, feature_dim] → (logit [], slide embedding [M], attention [K])."""
        h = self.embed((features - self.mean) / self.scale)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        attention = torch.softmax(scores, dim=0)
        embedding = (attention.unsqueeze(-1) * h).sum(0)
        return self.classifier(embedding).squeeze(-1), embedding, attention


@dataclass(frozen=True, eq=False)
class SlideEmbedding:
    embedding: np.ndarray  # [M]
    attention: np.ndarray  # [K], sums to 1
    probability: float  # the MIL head's own response probability (histology alone)


def embed_slide(model: GatedAttentionMIL, features: np.ndarray) -> SlideEmbedding:
    model.eval()
    with torch.no_grad():
        logit, embedding, attention = model(torch.from_numpy(features.astype(np.float32)).to(model_device(model)))
    return SlideEmbedding(embedding.cpu().numpy(), attention.cpu().numpy(), float(torch.sigmoid(logit)))


def train_mil(bags: list[np.ndarray], labels: np.ndarray, settings: MilSettings) -> GatedAttentionMIL:
    """One bag of patch features per slide, label 1 = responder; the minority class oversampled per epoch."""
    if len(bags) != len(labels) or not bags:
        raise ValueError("one label per bag, and at least one bag")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = GatedAttentionMIL(bags[0].shape[1], settings)
    model.fit_standardisation(bags)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_function = nn.BCEWithLogitsLoss()
    tensors = [torch.from_numpy(b.astype(np.float32)) for b in bags]
    for _ in range(settings.epochs):
        model.train()
        for i in rng.permutation(balanced_rows(labels, rng)):
            logit, _, _ = model(tensors[i])
            loss = loss_function(logit, torch.tensor(float(labels[i])))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return model
