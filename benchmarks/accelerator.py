"""Accelerator benchmark: the networks the pipelines run, on the CPU and, where there is one, on a CUDA GPU.

Measured side by side in one run, on synthetic inputs of the pipelines' shapes (nothing downloaded, no data
needed, weights freshly initialised: speed does not depend on them):
- the histology patch encoder (ResNet-50, 256 x 256 RGB patches at 20x): patches per second;
- the CytAct 3D CNN (2-channel 16^3 lesion cubes, 64 mm at 4 mm): lesions per second;
- the expression transformer (the default 140-gene panel): samples per second;
and, for the same inputs, the largest difference between the CPU's and the GPU's outputs (the pipelines run in
float32; the GPU's TF32 convolutions, PyTorch's default, are the main source of difference).

Each measurement runs for about `--seconds` after a warm-up (time-bounded, so that the whole run stays within a
few minutes on any machine). The table goes to stdout and, with `--out DIR`, to DIR/accelerator.md and
DIR/accelerator.json.

Usage: python benchmarks/accelerator.py [--out DIR] [--seconds S] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.cytact import CubeSpec, CytActNet, predict_with_embeddings  # noqa: E402
from models.device import select_device  # noqa: E402
from models.expression_transformer import ExpressionTransformer, TransformerSettings, predict_proba  # noqa: E402
from models.histology import ResNetEncoder, encode_patches  # noqa: E402

PANEL_GENES = 140  # models/panels/immune-default.tsv


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str  # what is counted per second
    batch_cpu: int
    batch_gpu: int
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[np.random.Generator, int], np.ndarray]
    run: Callable[[torch.nn.Module, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Measurement:
    workload: str
    unit: str
    device: str
    batch: int
    items: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds


def workloads(small: bool) -> list[Workload]:
    width = 16 if small else 64  # 64: ResNet-50 as the pipeline runs it
    patch = 64 if small else 256
    cube = CubeSpec().voxels
    return [
        Workload(
            "histology encoder (ResNet-50)" if not small else "histology encoder (narrow, --small)",
            "patches",
            8,
            128,
            lambda: ResNetEncoder(width),
            lambda rng, n: rng.integers(0, 256, (n, patch, patch, 3), dtype=np.uint8),
            lambda model, x, batch: encode_patches(model, x, batch),
        ),
        Workload(
            "CytAct 3D CNN",
            "lesions",
            32,
            256,
            CytActNet,
            lambda rng, n: rng.random((n, 2, cube, cube, cube), dtype=np.float32),
            lambda model, x, batch: predict_with_embeddings(model, x, batch)[0],
        ),
        Workload(
            "expression transformer",
            "samples",
            64,
            1024,
            lambda: ExpressionTransformer(PANEL_GENES, TransformerSettings()),
            lambda rng, n: rng.normal(size=(n, PANEL_GENES)).astype(np.float32),
            lambda model, x, batch: np.concatenate(
                [predict_proba(model, x[i : i + batch]) for i in range(0, len(x), batch)]
            ),
        ),
    ]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(workload: Workload, model: torch.nn.Module, device: torch.device, seconds: float) -> Measurement:
    """Items per second over repeated batches for about `seconds`, after one warm-up batch."""
    batch = workload.batch_gpu if device.type == "cuda" else workload.batch_cpu
    inputs = workload.inputs(np.random.default_rng(1), batch)
    model = model.to(device).eval()
    workload.run(model, inputs, batch)  # warm-up: kernels chosen, memory allocated
    _synchronise(device)
    items, started = 0, time.perf_counter()
    while True:
        workload.run(model, inputs, batch)
        _synchronise(device)
        items += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return Measurement(workload.name, workload.unit, str(device), batch, items, elapsed)


def agreement(workload: Workload, model: torch.nn.Module, device: torch.device) -> tuple[float, float]:
    """Largest absolute and relative difference between CPU and `device` outputs for the same inputs."""
    inputs = workload.inputs(np.random.default_rng(2), 16)
    on_cpu = workload.run(model.to("cpu").eval(), inputs, 16)
    on_device = workload.run(model.to(device).eval(), inputs, 16)
    difference = np.abs(on_device - on_cpu)
    scale = np.maximum(np.abs(on_cpu).max(), 1e-12)
    return float(difference.max()), float(difference.max() / scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for accelerator.md and accelerator.json")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement (default 8)")
    parser.add_argument("--small", action="store_true", help="narrow encoder and small patches (the CI run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    gpu = select_device("auto")
    devices = [torch.device("cpu")] + ([gpu.torch_device] if gpu.accelerated else [])
    environment = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "gpu": gpu.description if gpu.accelerated else "none",
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
    print(f"PyTorch {torch.__version__}, {environment['cpu_threads']} CPU threads, GPU: {environment['gpu']}")
    measurements, differences = [], {}
    for workload in workloads(args.small):
        model = workload.build()
        for device in devices:
            result = measure(workload, model, device, args.seconds)
            measurements.append(result)
            print(f"  {workload.name} on {device}: {result.per_second:,.1f} {workload.unit}/s", flush=True)
        if gpu.accelerated:
            differences[workload.name] = agreement(workload, model, gpu.torch_device)
    lines = [
        f"PyTorch {torch.__version__}; CPU: {environment['cpus']} logical CPUs, {environment['cpu_threads']} threads; "
        f"GPU: {environment['gpu']}; float32 (cuDNN TF32 {'on' if environment['cudnn_tf32'] else 'off'}).",
        "",
        "| network | unit | CPU per s | GPU per s | GPU / CPU | largest CPU-GPU difference (abs / rel) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for workload in workloads(args.small):
        rows = {m.device.split(":")[0]: m for m in measurements if m.workload == workload.name}
        cpu, cuda = rows["cpu"], rows.get("cuda")
        gpu_rate = f"{cuda.per_second:,.1f}" if cuda else "no GPU"
        ratio = f"{cuda.per_second / cpu.per_second:,.1f}x" if cuda else "-"
        diff = differences.get(workload.name)
        diff_text = f"{diff[0]:.2e} / {diff[1]:.2e}" if diff else "-"
        lines.append(
            f"| {workload.name} | {workload.unit} | {cpu.per_second:,.1f} | {gpu_rate} | {ratio} | {diff_text} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "accelerator.md").write_text(table + "\n")
        record = {
            "environment": environment,
            "measurements": [asdict(m) | {"per_second": m.per_second} for m in measurements],
            "differences": {name: {"abs": d[0], "rel": d[1]} for name, d in differences.items()},
        }
        (args.out / "accelerator.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
