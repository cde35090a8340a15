"""Fuzz the storage SCP with mutated real PET files and check the acknowledgement rule.

Seeds are real PET instances from ../shared/data (the SUV reference suite, sts_002, sts_003). Each case takes
one seed, gives it a fresh SOP Instance UID of the same length, applies one to three mutations (bit flips,
length-field edits, truncations, overwrites of a byte run, tag and VR edits, duplicated or dropped chunks)
and sends the data set in a raw C-STORE (pynetdicom's DIMSE layer, so that bytes no well-behaved sender
would produce reach the node) to an SCP running in this process on a free port.

Every instance answered 0x0000 must be fully readable: pydicom reads it and converts every element of every
item (and the pixel data of native syntaxes), and dcmtk `dcmdump` reads it without an error. The SCP must
answer C-ECHO throughout. Exit status 1 and a list of the cases when either fails.

    python benchmarks/fuzz_scp.py [--count 10000] [--seed 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from dicom_node.encoding import LONG_VRS, SHORT_VRS  # noqa: E402
from dicom_node.scp import StorageSCP  # noqa: E402
from immunode.config import parse_settings  # noqa: E402
from storage.audit import AuditTrail  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.files import FileLayout  # noqa: E402
from storage.schema import Instance  # noqa: E402
from storage.store import InstanceStore  # noqa: E402

SUCCESS = 0x0000


@dataclass(frozen=True)
class Seed:
    name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes


@dataclass
class Outcome:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # acknowledged but not fully readable: failures
    echo_failures: int = 0
    seconds: float = 0.0


def seeds() -> list[Seed]:
    """Real PET files: every SUV reference case's middle slice, and a few slices of sts_002 and sts_003."""
    cases = sorted(case for case in (SHARED / "suv_dro").glob("DRO_*") if case.is_dir())
    paths = [sorted((case / "PT").glob("*.dcm"))[10] for case in cases]
    for study in ("sts_002", "sts_003"):
        paths += sorted(p for p in (SHARED / study / "PET").glob("*.dcm") if "RTSTRUCT" not in p.name)[::12]
    found = []
    for path in paths:
        data = path.read_bytes()
        stream = BytesIO(data)
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.append(
            Seed(
                f"{path.parent.parent.name}/{path.name}",
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(meta.TransferSyntaxUID),
                data[stream.tell() :],
            )
        )
    return found


def _length_fields(data: bytes, explicit: bool) -> list[tuple[int, int]]:
    """(offset, width) of element length fields found by a tolerant scan of the top level and first items."""
    fields, offset = [], 0
    while offset + 8 <= len(data):
        group, element = int.from_bytes(data[offset : offset + 2], "little"), data[offset + 2 : offset + 4]
        vr = data[offset + 4 : offset + 6]
        if explicit and vr in LONG_VRS:
            fields.append((offset + 8, 4))
            length, header = int.from_bytes(data[offset + 8 : offset + 12], "little"), 12
        elif explicit and vr in SHORT_VRS:
            fields.append((offset + 6, 2))
            length, header = int.from_bytes(data[offset + 6 : offset + 8], "little"), 8
        else:
            fields.append((offset + 4, 4))
            length, header = int.from_bytes(data[offset + 4 : offset + 8], "little"), 8
        if length == 0xFFFFFFFF or group == 0xFFFE or not element:
            offset += header  # step into sequences and items
        else:
            offset += header + length
    return fields


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(seed.dataset)
    # A fresh SOP Instance UID of the same length, so that accepted cases are new instances.
    uid = seed.sop_instance_uid.encode()
    fresh = (uid[: max(len(uid) - 12, 2)] + str(rng.randrange(10**12)).rjust(12, "1").encode())[: len(uid)]
    data = bytearray(bytes(data).replace(uid, fresh))
    explicit = not UID(seed.transfer_syntax).is_implicit_VR
    kinds = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(("bitflip", "length", "length", "truncate", "overwrite", "tag", "vr", "chunk"))
        kinds.append(kind)
        if kind == "bitflip":
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(len(data))
                data[position] ^= 1 << rng.randrange(8)
        elif kind == "length":
            fields = _length_fields(bytes(data), explicit)
            if not fields:
                continue
            offset, width = rng.choice(fields)
            current = int.from_bytes(data[offset : offset + width], "little")
            limit = 2 ** (8 * width) - 1
            value = rng.choice(
                (0, limit, current + 1, current + 2, max(current - 1, 0), current * 2, rng.randrange(limit))
            )
            data[offset : offset + width] = min(value, limit).to_bytes(width, "little")
        elif kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "overwrite":
            start = rng.randrange(len(data))
            run = rng.randint(1, 64)
            filler = rng.choice((b"\x00", b"\xff", bytes([rng.randrange(256)])))
            data[start : start + run] = filler * len(data[start : start + run])
        elif kind == "tag":
            fields = _length_fields(bytes(data), explicit)
            if fields:
                offset, width = rng.choice(fields)
                start = offset - (8 if width == 4 and explicit else 6 if explicit else 4)
                data[start : start + 4] = rng.choice((b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xe0\x7f\x10\x00"))
        elif kind == "vr" and explicit:
            fields = [f for f in _length_fields(bytes(data), explicit) if f[1] == 2]
            if fields:
                offset, _ = rng.choice(fields)
                data[offset - 2 : offset] = rng.choice((b"SQ", b"OB", b"UN", b"XX", b"us", b"FD"))
        elif kind == "chunk":
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.randint(1, 256))
            data = data[:start] + (data[start:end] * 2 if rng.random() < 0.5 else b"") + data[end:]
    return bytes(data), f"{seed.name} {'+'.join(kinds)}"


class RawSender:
    """One association per presentation context, kept open; C-STORE of arbitrary bytes."""

    def __init__(self, port: int, calling: str = "FUZZER") -> None:
        self.port, self.calling = port, calling
        self._assocs: dict[tuple[str, str], object] = {}

    def _assoc(self, sop_class: str, syntax: str):
        assoc = self._assocs.get((sop_class, syntax))
        if assoc is None or not assoc.is_established:
            ae = AE(ae_title=self.calling)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
            ae.add_requested_context(sop_class, syntax)
            assoc = ae.associate("127.0.0.1", self.port, ae_title="IMMUNODE")
            if not assoc.is_established:
                raise RuntimeError("the SCP did not accept the fuzzer's association")
            self._assocs[(sop_class, syntax)] = assoc
        return assoc

    def store(self, sop_class: str, sop_instance: str, syntax: str, payload: bytes) -> int | None:
        assoc = self._assoc(sop_class, syntax)
        # Pause the requestor's reactor as send_c_store does, so that it does not consume the response.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0005)
        try:
            request = C_STORE()
            request.MessageID = 1
            request.AffectedSOPClassUID = sop_class
            request.AffectedSOPInstanceUID = sop_instance
            request.Priority = 2
            request.DataSet = BytesIO(payload)
            assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
            _, response = assoc.dimse.get_msg(block=True)
            return None if response is None else int(response.Status)
        finally:
            assoc._reactor_checkpoint.set()

    def close(self) -> None:
        for assoc in self._assocs.values():
            if assoc.is_established:
                assoc.release()


def echo(port: int) -> bool:
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return status is not None and status.Status == SUCCESS
    finally:
        assoc.release()


def readable(path: Path) -> str:
    """ "" when pydicom and dcmdump read the whole file; otherwise what failed."""
    try:
        ds = pydicom.dcmread(path)

        def convert(dataset: pydicom.Dataset) -> None:
            for element in dataset:
                if element.VR == "SQ":
                    for item in element.value:
                        convert(item)
                else:
                    _ = element.value

        convert(ds)
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            _ = ds.pixel_array
    except Exception as error:  # any failure to read is the finding
        return f"pydicom: {error.__class__.__name__}: {error}"[:300]
    completed = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, errors="replace")
    errors = [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("E:")]
    if completed.returncode != 0 or errors:
        return f"dcmdump: {(errors or [f'exit status {completed.returncode}'])[0]}"[:300]
    return ""


def run(count: int, seed: int, folder: Path, echo_every: int = 50) -> Outcome:
    settings = parse_settings(
        {
            "node": {"ae_title": "IMMUNODE", "host": "127.0.0.1"},
            "peers": {"allowed": [{"ae_title": "FUZZER", "host": "127.0.0.1"}]},
            "storage": {"root": str(folder / "store"), "min_free_mb": 0},
        },
        "fuzz settings",
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start(port=0)
    rng = random.Random(seed)
    corpus = seeds()
    outcome = Outcome()
    sender = RawSender(port)
    started = time.perf_counter()
    try:
        for case in range(count):
            chosen = rng.choice(corpus)
            payload, description = mutate(chosen, rng)
            fresh_uid = _instance_uid(payload, chosen)
            status = sender.store(chosen.sop_class_uid, fresh_uid, chosen.transfer_syntax, payload)
            outcome.cases += 1
            outcome.statuses["none" if status is None else f"0x{status:04X}"] += 1
            if status == SUCCESS:
                with database.session() as session:
                    path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == fresh_uid))
                problem = readable(layout.absolute(path)) if path else "acknowledged but not indexed"
                if problem:
                    outcome.unreadable.append(f"case {case} ({description}): {problem}")
            if (case + 1) % echo_every == 0 and not echo(port):
                outcome.echo_failures += 1
        if not echo(port):
            outcome.echo_failures += 1
    finally:
        sender.close()
        scp.stop()
        database.dispose()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _instance_uid(payload: bytes, seed: Seed) -> str:
    """The fresh UID mutate() put in place of the seed's (same length and prefix)."""
    uid = seed.sop_instance_uid.encode()
    prefix = uid[: max(len(uid) - 12, 2)]
    at = payload.find(prefix)
    while at >= 0:
        candidate = payload[at : at + len(uid)]
        if candidate.replace(b".", b"").isdigit() and candidate != uid:
            return candidate.decode()
        at = payload.find(prefix, at + 1)
    return seed.sop_instance_uid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="keep the node's storage here instead of a temporary folder")
    args = parser.parse_args(argv)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="immunode-fuzz-"))
    try:
        outcome = run(args.count, args.seed, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    accepted = outcome.statuses.get("0x0000", 0)
    print(f"{outcome.cases} mutated instances in {outcome.seconds:.1f} s; statuses: {dict(outcome.statuses)}")
    print(f"acknowledged: {accepted}; acknowledged but not fully readable: {len(outcome.unreadable)}")
    print(f"C-ECHO failures: {outcome.echo_failures}")
    for line in outcome.unreadable[:50]:
        print(f"  {line}")
    return 1 if outcome.unreadable or outcome.echo_failures else 0


if __name__ == "__main__":
    sys.exit(main())
