"""Configuration block `pipelines.compute`, shared by the pipelines whose networks can run on a GPU (the CytAct
CNN, the expression transformer, the histology encoder and MIL pooling): which device they run on."""

from __future__ import annotations

from pydantic import Field

from common.settings import Strict


class ComputeSettings(Strict):
    # auto: the first CUDA device when the worker sees one, else the CPU; cpu; cuda or cuda:N: that device, or
    # the CPU with the reason logged (and stated in the report) when it is not there. Results agree within
    # floating-point tolerance (benchmarks/accelerator.py prints the largest difference).
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
