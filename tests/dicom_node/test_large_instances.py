"""Whole-slide images arrive as instances of hundreds of MB: the SCP writes each data set to disk as its PDUs
arrive, checks it through a memory map and moves it into the store, so its memory does not grow with the
instance. Measured on this process (the SCP runs in it; dcmtk storescu sends from another): its anonymous
memory (RssAnon: heap and buffers, what cannot be reclaimed) sampled every 5 ms during the transfer. The
file-backed pages of the map are page cache that the kernel reclaims, not counted."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Instance
from storage.store import InstanceStore
from tests.conftest import storescu
from tests.synthetic_slides import write_large_instance, write_slide

INSTANCE_MB = 160
# Generous: the interpreter's own allocations while a transfer runs; the old in-memory path needed more
# than twice the instance (the assembled data set, then its encoded copy).
MAX_GROWTH_MB = 32


def _anonymous_kb() -> int:
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class _PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _anonymous_kb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, _anonymous_kb())


@pytest.fixture
def node(tmp_path: Path, make_settings):
    settings = make_settings()
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start()
    yield port, database, layout
    scp.stop()
    database.dispose()


def test_a_large_whole_slide_instance_is_stored_with_bounded_memory(tmp_path: Path, node) -> None:
    port, database, layout = node
    source = write_large_instance(tmp_path / "large.dcm", INSTANCE_MB)
    size = source.stat().st_size
    assert size > (INSTANCE_MB - 5) * 1024 * 1024
    before = _anonymous_kb()
    sampler = _PeakSampler()
    sampler.start()
    completed = storescu(port, source, extra=["-R", "-xy"])  # the files' own SOP class and transfer syntax
    sampler.done.set()
    sampler.join()
    growth_mb = (sampler.peak - before) / 1024
    print(f"peak anonymous memory growth {growth_mb:.1f} MB")
    assert completed.returncode == 0, completed.stderr
    with database.session() as session:
        row = session.scalar(select(Instance))
    stored = layout.absolute(row.path)
    # The data set as sent (the file meta is the node's own, a few bytes may differ).
    assert abs(stored.stat().st_size - size) < 512
    with stored.open("rb") as mine, source.open("rb") as theirs:
        mine.seek(-65536, 2)
        theirs.seek(-65536, 2)
        assert mine.read() == theirs.read()
    assert pydicom.dcmread(stored, stop_before_pixels=True).NumberOfFrames > 500
    assert growth_mb < MAX_GROWTH_MB, (
        f"peak anonymous memory grew by {growth_mb:.0f} MB receiving {size / 2**20:.0f} MB"
    )
    assert not list(layout.receiving.glob("*.dcm"))  # moved into the store, nothing left behind


def test_a_refused_large_instance_leaves_nothing_behind(tmp_path: Path, node) -> None:
    port, database, layout = node
    slide = write_slide(tmp_path / "slide", "P-REFUSED", infiltrated=False, size=512, levels=1)
    ds = pydicom.dcmread(slide.files[0])
    ds.SeriesInstanceUID = "not..a..uid"
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    completed = storescu(port, bad, extra=["-R", "-xy"])
    assert "0xa900" in (completed.stdout + completed.stderr).lower() or completed.returncode != 0
    with database.session() as session:
        assert session.scalar(select(Instance)) is None
    assert not list(layout.receiving.glob("*.dcm"))


def test_received_files_of_dead_runs_are_removed_at_start_up(tmp_path: Path) -> None:
    """Files in flight carry their node run: a run that is not alive (killed, crashed) leaves nothing for long,
    whatever the age of its files; a live run's (another node on the same root) are left alone. Files named
    without a run (written by an older version) go once an hour old."""
    import os
    import time

    layout = FileLayout(tmp_path / "store")
    dead, live = layout.receiving / "r3-rx-abc.dcm", layout.receiving / "r4-rx-def.dcm"
    dead_part, live_part = layout.receiving / "r3-0f.part", layout.receiving / "r4-0e.part"
    old, young = layout.receiving / "tmpold.dcm", layout.receiving / "tmpyoung.dcm"
    for path in (dead, live, dead_part, live_part, old, young):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert layout.remove_leftovers(live_runs={4, 5}) == 3
    assert sorted(p.name for p in layout.receiving.iterdir()) == ["r4-0e.part", "r4-rx-def.dcm", "tmpyoung.dcm"]
    layout.run_id = 5
    assert layout.in_flight_prefix == "r5-"
