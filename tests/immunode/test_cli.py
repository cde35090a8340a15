"""`immunode process`: the pipelines on a folder, no network, for research use."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd

from immunode.cli import main as cli_main
from tests.conftest import dciodvfy_errors
from tests.synthetic import DEFAULT_LESIONS, write_study


def test_process_folder_writes_valid_seg_and_sr_and_reports_bad_files(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in"
    write_study(source, vendor="philips", shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:2])
    (source / "notes.txt").write_text("not DICOM")
    truncated = source / "PT" / "pt_0005.dcm"
    (source / "broken.dcm").write_bytes(truncated.read_bytes()[:200])
    out = tmp_path / "out"
    assert cli_main(["process", str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "notes.txt: not readable as DICOM" in captured.err
    assert "broken.dcm: not readable as DICOM" in captured.err
    assert "Research use only" in captured.out
    written = sorted(out.iterdir())
    assert len(written) == 2
    for path in written:
        assert dciodvfy_errors(path) == []
    seg = next(hd.seg.segread(p) for p in written if "SEG:" in captured.out and p.name.endswith("001.dcm"))
    assert len(seg.SegmentSequence) == 2


def test_process_folder_without_pet_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    assert cli_main(["process", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    assert "no series under" in capsys.readouterr().err
