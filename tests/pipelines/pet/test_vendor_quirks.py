"""Derived objects survive vendor quirks: for every real vendor PET header and every quirk seen on site, the
node's SEG and SR pass dciodvfy and read back with highdicom, and the SR says what was conformed."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest

from common.states import OutputKind
from pipelines.pet.analysis import algorithm_identity, analyse_pet_series, summarise
from pipelines.pet.report import write_pet_report
from pipelines.pet.settings import PetQuantSettings
from tests.conftest import dciodvfy_errors
from tests.vendor_quirks import HEADER_FILES, QUIRKS, write_vendor_series

PARAMS = PetQuantSettings()


def _report(tmp_path: Path, header_file: Path, quirks: tuple[str, ...]):
    study = write_vendor_series(tmp_path / "series", header_file, quirks)
    result = analyse_pet_series(study.pet_files, PARAMS)
    counter = iter(range(100))
    files = write_pet_report(
        result, algorithm_identity(PARAMS), summarise(result), None, lambda: tmp_path / f"out{next(counter)}.dcm"
    )
    return result, files


@pytest.mark.parametrize(
    "header_file", HEADER_FILES, ids=[p.name.removesuffix("-instances.json") for p in HEADER_FILES]
)
def test_every_vendor_header_gives_a_valid_seg_and_sr(tmp_path: Path, header_file: Path) -> None:
    result, files = _report(tmp_path, header_file, ())
    assert len(result.lesions) == 1
    assert result.lesions[0].measurements.suv_max == pytest.approx(8.0, rel=0.25)
    for file in files:
        assert dciodvfy_errors(file.path) == [], file.kind


@pytest.mark.parametrize("quirk", QUIRKS)
def test_every_quirk_gives_a_valid_seg_and_sr_that_says_what_was_conformed(tmp_path: Path, quirk: str) -> None:
    philips = next(p for p in HEADER_FILES if p.name.startswith("PHILIPS_CNTS_AND_SUV"))
    _, files = _report(tmp_path, philips, (quirk,))
    for file in files:
        assert dciodvfy_errors(file.path) == [], (file.kind, quirk)
    seg = hd.seg.segread(next(f.path for f in files if f.kind is OutputKind.SEG))
    sr = hd.sr.srread(next(f.path for f in files if f.kind is OutputKind.SR))
    for derived in (seg, sr):
        assert not any(element.tag.is_private for element in derived)
        assert "ReferencedStudySequence" not in derived or len(derived.ReferencedStudySequence) > 0
    if quirk == "deidentified-without-method":
        assert sr.PatientIdentityRemoved == "YES" and "Not stated by the source" in sr.DeidentificationMethod
    texts = " ".join(str(item.get("TextValue", "")) for item in _items(sr))
    if quirk in ("empty-sequence", "deidentified-without-method", "invalid-values"):
        assert "Source attributes conformed" in texts
    if quirk == "invalid-values":
        assert sr.PatientSex == "M" and len(sr.StudyID) <= 16


def _items(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)
