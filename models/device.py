"""Which device the networks run on: `auto` (the first CUDA device when there is one, else the CPU), `cpu`, or
`cuda` / `cuda:N` (that device; the CPU, with the reason logged, when it is not there). The same weights give
the same results within floating-point tolerance on either (GPU kernels sum in other orders)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """The device chosen for a setting, and in words what it is and why (for logs and reports)."""

    torch_device: torch.device
    description: str  # e.g. "cuda:0 (NVIDIA H200)" or "CPU"
    fallback: str = ""  # why the CPU runs what was asked of a GPU ("" when nothing fell back)

    @property
    def accelerated(self) -> bool:
        return self.torch_device.type != "cpu"


CPU = Device(torch.device("cpu"), "CPU")


def _cuda_missing() -> str:
    """Why CUDA cannot be used here ("" when it can)."""
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)"
    return ""


def select_device(setting: str) -> Device:
    """The device for `setting` (see the module's documentation); never raises for a missing GPU."""
    kind, colon, number = setting.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (colon and (kind != "cuda" or not number.isdigit())):
        raise ValueError(f"device {setting!r}: expected auto, cpu, cuda or cuda:N")
    if setting == "cpu":
        return CPU
    missing = _cuda_missing()
    if setting == "auto":
        if missing:
            logger.debug("device auto: CPU (%s)", missing)
            return CPU
        setting = "cuda:0"
    index = int(setting.partition(":")[2] or 0)
    if not missing and index >= torch.cuda.device_count():
        missing = f"cuda:{index} asked for, {torch.cuda.device_count()} CUDA device(s) present"
    if missing:
        reason = f"{setting} configured, running on the CPU: {missing}"
        logger.warning("%s", reason)
        return Device(torch.device("cpu"), "CPU", reason)
    device = torch.device("cuda", index)
    return Device(device, f"cuda:{index} ({torch.cuda.get_device_name(index)})")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a network's weights are: its inputs go there (`models.serving` loads it onto the chosen device)."""
    return next(model.parameters()).device
