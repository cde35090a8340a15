"""Snapshot of what the node sends to a PACS, to prove that a refactoring leaves the SEG/SR content unchanged.

    python -m benchmarks.output_snapshot capture OUT [--scratch DIR]   # sts_002 PET/CT + a synthetic PET/CT
    python -m benchmarks.output_snapshot compare A B                    # differences, UIDs/dates/times masked

`capture` runs a node in this process (PET and CT pipelines, one worker) with dcmtk `storescp` as the PACS,
sends `../shared/data/sts_002` and a synthetic whole-body PET/CT, and copies the 8 objects it receives.
`compare` reads both folders and reports every attribute that differs, recursively, with generated UIDs
(also inside text), dates and times masked: two captures of the same tree differ in nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GENERATED_UID = re.compile(r"(2\.25\.|1\.2\.826\.0\.1\.3680043\.)[0-9.]+")


def capture(out: Path, scratch: Path) -> int:
    from immunode.config import parse_settings
    from immunode.service import Node
    from tests.conftest import STS_002, StoreSCP, free_port, storescu, wait_until
    from tests.synthetic import DEFAULT_LESIONS, write_study

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pacs = StoreSCP(scratch / "pacs", free_port())
    pacs.start()
    settings = parse_settings(
        {
            "node": {"ae_title": "IMMUNODE", "host": "127.0.0.1", "port": free_port()},
            "peers": {"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
            "storage": {"root": str(scratch / "store"), "min_free_mb": 0},
            "routing": {"study_stable_s": 1.0, "poll_interval_s": 0.2},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        },
        "snapshot",
    )
    node = Node(settings)
    node.start()
    try:
        files = sorted((STS_002 / "PET").glob("*.dcm")) + sorted((STS_002 / "CT").glob("*.dcm"))
        assert storescu(node.port, files).returncode == 0
        study = write_study(
            scratch / "synthetic", vendor="siemens", shape_zyx=(60, 96, 96), lesions=DEFAULT_LESIONS[:3]
        )
        assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
        wait_until(lambda: len(pacs.received()) >= 8, timeout_s=600)
        time.sleep(3)
        for path in pacs.received():
            shutil.copy(path, out / path.name)
        print(f"{len(pacs.received())} objects in {out}")
    finally:
        node.stop()
        pacs.stop()
    return 0


def _normalised(ds: pydicom.Dataset) -> list:
    items = []
    for element in ds:
        name = element.keyword or str(element.tag)
        if element.VR == "SQ":
            items.append((name, [_normalised(item) for item in element.value]))
        elif element.VR in ("DA", "TM", "DT"):
            items.append((name, "<time>"))
        elif element.keyword == "PixelData":
            items.append((name, hashlib.sha256(element.value).hexdigest()))
        elif element.tag.is_private and element.VR in ("OB", "UN"):
            continue
        else:
            items.append((name, GENERATED_UID.sub("<uid>", str(element.value))))
    return items


def _objects(folder: Path) -> dict[tuple[str, str, str], list]:
    found: dict[tuple[str, str, str], list] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        study = "synthetic" if GENERATED_UID.match(str(ds.StudyInstanceUID)) else str(ds.StudyInstanceUID)
        found.setdefault((str(ds.Modality), str(ds.SeriesDescription), study), []).append(_normalised(ds))
    return found


def _differences(a: object, b: object, where: str) -> list[str]:
    if isinstance(a, list) and isinstance(b, list):
        found = [f"{where}: {len(a)} items != {len(b)}"] if len(a) != len(b) else []
        for index, (x, y) in enumerate(zip(a, b)):
            found += _differences(x, y, f"{where}[{index}]")
        return found
    if isinstance(a, tuple) and isinstance(b, tuple):
        if a[0] != b[0]:
            return [f"{where}: {a[0]} != {b[0]}"]
        return _differences(a[1], b[1], f"{where}.{a[0]}")
    return [] if a == b else [f"{where}: {str(a)[:200]!r} != {str(b)[:200]!r}"]


def compare(first: Path, second: Path) -> int:
    a, b = _objects(first), _objects(second)
    found = [f"only in one: {key}" for key in sorted(set(a) ^ set(b))]
    for key in sorted(set(a) & set(b)):
        found += _differences(a[key], b[key], " / ".join(key[:2]))
    for line in found:
        print(line)
    print(f"{len(set(a) & set(b))} kinds of object compared; {len(found)} difference(s)")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    taking = commands.add_parser("capture")
    taking.add_argument("out", type=Path)
    taking.add_argument("--scratch", type=Path)
    comparing = commands.add_parser("compare")
    comparing.add_argument("first", type=Path)
    comparing.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.first, args.second)
    if args.scratch is not None:
        return capture(args.out, args.scratch)
    with tempfile.TemporaryDirectory(prefix="snapshot-") as scratch:
        return capture(args.out, Path(scratch))


if __name__ == "__main__":
    sys.exit(main())
