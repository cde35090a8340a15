"""The histology arm's networks: the ResNet-50 patch encoder is ResNet-50 (its parameter count), SimCLR's loss
prefers matching views, and gated-attention MIL finds a planted signal in bags and puts its attention there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.histology import (
    GatedAttentionMIL,
    MilSettings,
    ResNetEncoder,
    embed_slide,
    encode_patches,
    nt_xent,
    parameter_count,
    train_mil,
)


def test_the_patch_encoder_is_resnet50() -> None:
    encoder = ResNetEncoder(64)
    # torchvision's resnet50 without its fc layer has 23,508,032 parameters; features are 2048-D.
    assert parameter_count(encoder) == 23_508_032
    assert encoder.dim == 2048
    features = encode_patches(ResNetEncoder(4), np.zeros((3, 64, 64, 3), np.uint8))
    assert features.shape == (3, 128)


def test_nt_xent_is_lower_for_matching_views() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(8, 16, generator=generator)
    matching = first + 0.01 * torch.randn(8, 16, generator=generator)
    unrelated = torch.randn(8, 16, generator=generator)
    assert float(nt_xent(first, matching, 0.1)) < float(nt_xent(first, unrelated, 0.1)) - 1.0


def _bags(count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Bags of 20-40 instances; a positive bag holds 3 instances shifted along a planted direction."""
    direction = np.zeros(16)
    direction[3] = 3.0
    bags, labels, planted = [], [], []
    for i in range(count):
        size = int(rng.integers(20, 40))
        bag = rng.normal(0, 1, (size, 16))
        marks = np.zeros(size, bool)
        if i % 2 == 0:
            index = rng.choice(size, 3, replace=False)
            bag[index] += direction
            marks[index] = True
        bags.append(bag)
        labels.append(i % 2 == 0)
        planted.append(marks)
    return bags, np.array(labels, dtype=int), planted


def test_gated_attention_mil_finds_the_planted_instances(torch_threads_restored) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    bags, labels, _ = _bags(40, rng)
    model = train_mil(bags, labels, MilSettings(embedding_dim=32, attention_dim=16, epochs=15, learning_rate=2e-3))
    test_bags, test_labels, planted = _bags(20, np.random.default_rng(1))
    slides = [embed_slide(model, bag) for bag in test_bags]
    positive = [s.probability for s, y in zip(slides, test_labels) if y]
    negative = [s.probability for s, y in zip(slides, test_labels) if not y]
    assert np.mean(positive) > np.mean(negative) + 0.3
    ratios = []
    for slide, marks, label in zip(slides, planted, test_labels):
        assert slide.attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert slide.embedding.shape == (32,)
        if label:  # a planted instance gets more attention than the others
            ratios.append(slide.attention[marks].mean() / slide.attention[~marks].mean())
    assert np.mean(ratios) > 2.0


def test_mil_standardisation_is_part_of_the_weights() -> None:
    model = GatedAttentionMIL(4, MilSettings(embedding_dim=8, attention_dim=4))
    model.fit_standardisation([np.full((3, 4), 5.0), np.full((2, 4), 7.0)])
    state = model.state_dict()
    assert "mean" in state and "scale" in state
    assert float(state["mean"][0]) == pytest.approx(5.8)
