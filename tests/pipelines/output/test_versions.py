"""Result versions: Series Numbers never reused, lesions of the previous version read back from our SEG and
matched by overlap (their tracking UIDs persist), readers named from real annotation objects, the statements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from common.types import ResultVersion
from pipelines.output.seg import build_segmentation
from pipelines.output.versions import (
    ReaderObserver,
    SeriesNumbers,
    match_by_overlap,
    prior_lesions,
    reader_observers,
    report_version,
)
from pipelines.types import AlgorithmIdentity, SegmentedLesion
from tests.conftest import SHARED_DATA
from tests.synthetic import DEFAULT_LESIONS, write_rtstruct, write_study

QIN = SHARED_DATA / "qin_hn_expert_objects"


def _lesion(number: int, offset: tuple[int, int, int], size: int, uid: str = "") -> SegmentedLesion:
    return SegmentedLesion(number, f"Candidate {number}", uid or f"1.2.3.{number}", offset, np.ones((size,) * 3, bool))


def test_series_numbers_move_past_every_number_the_study_holds() -> None:
    numbers = SeriesNumbers({990, 991, 1000, 60})
    assert [numbers.take(990), numbers.take(991), numbers.take(990)] == [1010, 1001, 1020]
    assert SeriesNumbers().take(992) == 992


def test_lesions_match_one_to_one_by_the_largest_overlap() -> None:
    prior = [_lesion(1, (0, 0, 0), 4), _lesion(2, (10, 10, 10), 4), _lesion(3, (20, 0, 0), 2)]
    # New 1 covers prior 1 wholly and a corner of prior 2; new 2 is prior 2 shifted by one voxel; new 3 is new.
    new = [_lesion(1, (0, 0, 0), 11), _lesion(2, (11, 11, 11), 4), _lesion(3, (30, 30, 30), 3)]
    matches = {m.number: (m.prior.number, round(m.dice, 3)) for m in match_by_overlap(new, prior)}
    assert matches == {1: (1, round(2 * 64 / (1331 + 64), 3)), 2: (2, round(2 * 27 / 128, 3))}
    assert match_by_overlap(new, prior, minimum=0.5) == match_by_overlap(new, prior)[:1]


def test_the_previous_versions_segments_read_back_on_the_source_volume(tmp_path: Path) -> None:
    study = write_study(tmp_path / "src", with_ct=False, shape_zyx=(12, 24, 24), lesions=DEFAULT_LESIONS[:1])
    sources = sorted((pydicom.dcmread(p) for p in study.pet_files), key=lambda d: float(d.ImagePositionPatient[2]))
    written = [
        _lesion(1, (2, 3, 4), 3, "1.2.826.0.1.3680043.10.1"),
        SegmentedLesion(2, "Candidate 2", "1.2.826.0.1.3680043.10.2", (7, 10, 10), np.eye(4, dtype=bool)[None]),
    ]
    seg = build_segmentation(sources, written, AlgorithmIdentity.of("test", {}), "test", "test", 990)
    seg.save_as(tmp_path / "seg.dcm")
    read = prior_lesions(tmp_path / "seg.dcm", [str(ds.SOPInstanceUID) for ds in sources])
    assert [(r.number, r.tracking_identifier, r.tracking_uid, r.offset) for r in read] == [
        (1, "Candidate 1", "1.2.826.0.1.3680043.10.1", (2, 3, 4)),
        (2, "Candidate 2", "1.2.826.0.1.3680043.10.2", (7, 10, 10)),
    ]
    assert read[0].mask.all() and read[0].mask.shape == (3, 3, 3)
    assert np.array_equal(read[1].mask, written[1].mask)


def test_readers_are_named_from_real_annotation_objects(tmp_path: Path) -> None:
    seg, sr = reader_observers([QIN / "seg.dcm", QIN / "sr.dcm"])
    assert (seg.name, sr.name) == ("User2", "User2")  # Content Creator's Name; SR Person Observer Name
    assert seg.source.startswith("SEG ") and "QIICR QIN IOWA" in seg.source and seg.frames
    study = write_study(tmp_path / "src", with_ct=False, shape_zyx=(12, 24, 24), lesions=DEFAULT_LESIONS[:1])
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:1])
    rtstruct = pydicom.dcmread(path)
    rtstruct.OperatorsName = ["Reader^Rita", "Second^Reader"]
    rtstruct.save_as(path)
    (observer,) = reader_observers([path, tmp_path / "missing.dcm"])  # an unreadable object names nobody
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    assert observer.name == "Reader^Rita" and observer.annotates(frame)
    assert not observer.annotates("1.2.3.4")


def test_a_versions_statements_say_which_why_what_it_supersedes_and_who_confirmed() -> None:
    prior = [_lesion(1, (0, 0, 0), 4), _lesion(2, (10, 10, 10), 4)]
    new = [_lesion(1, (0, 0, 0), 4)]
    version = report_version(
        ResultVersion(2, "a reader's annotation arrived after the analysis (revision 2)", frozenset({990, 991})),
        "1.2.3.99",
        SeriesNumbers({990, 991}),
        990,
        991,
        (ReaderObserver("", "SEG 1.2.3.7"), ReaderObserver("Reader^Rita", "RTSTRUCT 1.2.3.8")),
        match_by_overlap(new, prior),
        prior,
        {1: "Lesion 1"},
    )
    assert (version.seg_series_number, version.sr_series_number, version.reader) == (1000, 1001, "Reader^Rita")
    text = " ".join(version.statements)
    assert "Report version 2: a reader's annotation arrived after the analysis (revision 2)." in text
    assert "Supersedes the report SR 1.2.3.99 (Predecessor Documents Sequence)" in text
    assert "reader not named in the object (SEG 1.2.3.7); Reader^Rita (RTSTRUCT 1.2.3.8)" in text
    assert "VerificationFlag UNVERIFIED" in text
    assert "same tracking UID: Lesion 1 = Candidate 1 (Dice 1.00)." in text
    assert "Not in this version (withdrawn): Candidate 2." in text
