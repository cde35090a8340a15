"""Per-volume CT radiomics extraction time against voxel count (the method's settings: 1 mm resampling, bin
width 25, original + 8 wavelets, all classes), on a synthetic CT with spherical lesions of growing size,
extracted in parallel worker processes as the node does. Prints a Markdown table for docs/methods/ct.md.

    python -m benchmarks.radiomics_timing [--processes 2] [--radii 5,10,15,20,30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pipelines.ct.lesions import annotation_regions, load_ct_volume
from pipelines.ct.radiomics import extract_volumes
from tests.synthetic_ct import CtLesionSpec, write_ct_study


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--radii", default="5,10,15,20,30")
    args = parser.parse_args()
    radii = [float(r) for r in args.radii.split(",")]
    positions = [(-70, 0, 20), (50, 10, -30), (0, -30, 40), (-40, 40, -40), (60, -40, 10), (0, 20, -10)]
    lesions = tuple(CtLesionSpec(f"L{i + 1}", positions[i % len(positions)], r) for i, r in enumerate(radii))
    import re

    with tempfile.TemporaryDirectory() as folder:
        study = write_ct_study(Path(folder), lesions, "20260105", shape_zyx=(60, 128, 160), spacing_xyz=(2.0, 2.0, 3.0))
        ct = load_ct_volume(study.ct_files)
        regions = annotation_regions([study.rtstruct], ct, re.compile("node"))
        masks = {region.label: region.mask for region in regions}
        results = extract_volumes(ct.hu, ct.geometry, masks, args.processes, Path(folder))
    print(f"{os.cpu_count()} CPU(s), {args.processes} worker process(es); CT voxels 2 x 2 x 3 mm")
    print("| lesion radius (mm) | CT voxels | seconds |")
    print("|---:|---:|---:|")
    for radius, result in sorted(zip(radii, sorted(results, key=lambda r: int(r.volume[1:])))):
        print(f"| {radius:g} | {result.voxel_count} | {result.seconds:.2f} |")


if __name__ == "__main__":
    main()
