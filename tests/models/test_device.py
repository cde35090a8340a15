"""Device selection (`models.device`): the CPU unless a CUDA device is there; `cuda` asked for without one runs on
the CPU with the reason logged; the networks give the same results on a GPU as on the CPU (that test runs where
a GPU is, and is skipped on the CPU-only CI machines); the histology pipeline's patch budget follows the device
and the report says which it was."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from immunode.config import ConfigError, parse_settings
from models.cytact import CytActNet, predict_with_embeddings
from models.device import CPU, select_device
from models.expression_transformer import ExpressionTransformer, TransformerSettings, embed, predict_proba
from models.histology import GatedAttentionMIL, ResNetEncoder, embed_slide, encode_patches
from pipelines.histology import slide as wsi
from pipelines.histology.analysis import analyse_slide
from pipelines.histology.report import statements
from pipelines.histology.settings import HistologySettings
from pipelines.types import ModelIdentity
from tests.synthetic_slides import write_slide

HAS_CUDA = torch.cuda.is_available()


def test_cpu_is_the_cpu_and_auto_is_the_cpu_without_cuda() -> None:
    assert select_device("cpu") == CPU
    if not HAS_CUDA:
        chosen = select_device("auto")
        assert chosen.torch_device.type == "cpu" and not chosen.fallback and not chosen.accelerated


@pytest.mark.skipif(HAS_CUDA, reason="the fallback is what a machine without CUDA does")
@pytest.mark.parametrize("asked", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_asked_for_without_a_device_falls_back_to_the_cpu_saying_why(asked, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="models.device"):
        chosen = select_device(asked)
    assert chosen.torch_device.type == "cpu" and not chosen.accelerated
    assert chosen.fallback.startswith(f"{asked} configured, running on the CPU: ")
    assert "CUDA" in chosen.fallback
    assert chosen.fallback in caplog.text


def test_a_device_index_beyond_the_devices_falls_back(monkeypatch) -> None:
    """The decision when CUDA is there but not the device asked for (CUDA's presence as the driver reports it)."""
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"device {index}")
    assert select_device("cuda").torch_device == torch.device("cuda", 0)
    assert select_device("auto").description == "cuda:0 (device 0)"
    fallback = select_device("cuda:1")
    assert fallback.torch_device.type == "cpu" and "1 CUDA device(s) present" in fallback.fallback


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cpu:0", "CUDA"])
def test_an_unknown_device_stops_start_up_naming_the_key(bad) -> None:
    with pytest.raises(ValueError):
        select_device(bad)
    with pytest.raises(ConfigError, match="pipelines.compute.device"):
        parse_settings({"pipelines": {"compute": {"device": bad}}})


def test_the_configured_device_reaches_the_settings() -> None:
    assert parse_settings({}).pipelines.compute.device == "auto"
    assert parse_settings({"pipelines": {"compute": {"device": "cuda:1"}}}).pipelines.compute.device == "cuda:1"


def _networks() -> dict:
    torch.manual_seed(0)
    return {
        "cytact": CytActNet(),
        "transformer": ExpressionTransformer(24, TransformerSettings()),
        "encoder": ResNetEncoder(base_width=8),
        "mil": GatedAttentionMIL(8 * 32),
    }


def _outputs(networks: dict, device: torch.device) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cubes = rng.random((5, 2, 16, 16, 16), dtype=np.float32)
    expression = rng.normal(size=(7, 24)).astype(np.float32)
    patches = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    moved = {name: network.to(device).eval() for name, network in networks.items()}
    scores, embeddings = predict_with_embeddings(moved["cytact"], cubes)
    features = encode_patches(moved["encoder"], patches, batch_size=4)
    slide = embed_slide(moved["mil"], features)
    return {
        "cytact": scores,
        "cytact embedding": embeddings,
        "transformer": predict_proba(moved["transformer"], expression),
        "transformer embedding": embed(moved["transformer"], expression),
        "encoder": features,
        "mil attention": slide.attention,
    }


def test_networks_run_where_their_weights_are_and_answer_on_the_cpu() -> None:
    outputs = _outputs(_networks(), torch.device("cpu"))
    assert all(isinstance(value, np.ndarray) and np.isfinite(value).all() for value in outputs.values())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run where one is lent; CI has none)")
def test_networks_agree_on_cpu_and_gpu() -> None:
    networks = _networks()
    on_cpu = _outputs(networks, torch.device("cpu"))
    on_gpu = _outputs(networks, select_device("cuda").torch_device)
    for name, expected in on_cpu.items():
        np.testing.assert_allclose(on_gpu[name], expected, rtol=1e-3, atol=1e-4, err_msg=name)


# --- the histology pipeline's patches follow the device ---------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide"), "P-TISSUE", infiltrated=True, size=1536)


def _analyse(slide, settings: HistologySettings):
    torch.manual_seed(0)
    identity = ModelIdentity("test", "0", "0" * 64, True)
    return analyse_slide(
        "1.2.3", slide.files, settings, ResNetEncoder(base_width=8), identity, GatedAttentionMIL(256), identity,
        select_device("cpu"),
    )  # fmt: skip


def test_on_the_cpu_the_subsample_applies_and_the_report_says_so(slide) -> None:
    with wsi.open_slide(slide.files) as opened:
        _, every = wsi.tissue_patches(opened, HistologySettings(), None)
    assert len(every.origins) == every.candidates > 5
    result = _analyse(slide, HistologySettings(max_patches=5, gpu_max_patches=None, stain_normalisation="none"))
    assert len(result.origins) == 5 and result.candidates == every.candidates
    text = " ".join(statements(result, 0.5))
    assert f"Subsampled: 5 of {every.candidates} tissue patches" in text
    assert "(pipelines.histology.max_patches); encoded on CPU" in text
    whole = _analyse(slide, HistologySettings(stain_normalisation="none"))
    assert f"Every tissue patch analysed ({every.candidates}); encoded on CPU" in " ".join(statements(whole, 0.5))
