"""The command line: `immunode process` (the pipelines on a folder, no network, for research use), global
options anywhere on the line, and the commands that read the index refusing to create one."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
import yaml

from immunode.cli import build_parser
from immunode.cli import main as cli_main
from storage.database import Database
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


def _config(tmp_path: Path, make_settings, with_index: bool) -> tuple[Path, Path]:
    """A config file on a storage root of its own, and the index file it names (created when asked)."""
    settings = make_settings()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    if with_index:
        Database(settings.database_url).dispose()
    return config, settings.storage.root / "index.sqlite3"


@pytest.mark.parametrize(
    "arguments",
    [
        ["--config", "{config}", "status"],
        ["status", "--config", "{config}"],
        ["-c", "{config}", "audit", "--since", "1h"],
        ["audit", "--since", "1h", "-c", "{config}"],
    ],
)
def test_global_options_before_or_after_the_command(tmp_path: Path, make_settings, capsys, arguments) -> None:
    config, _ = _config(tmp_path, make_settings, with_index=True)
    assert cli_main([a.format(config=config) for a in arguments]) == 0
    out = capsys.readouterr().out
    assert "Studies" in out or "no audit records" in out


def test_global_options_of_nested_commands_and_their_precedence() -> None:
    parse = build_parser().parse_args
    fusion = ["train", "fusion", "--cohort", "c.csv"]
    assert parse(["--config", "a.yaml", *fusion]).config == "a.yaml"  # not overwritten by the sub-command's default
    assert parse([*fusion, "--config", "b.yaml"]).config == "b.yaml"
    assert parse(["train", "-c", "b.yaml", "fusion", "--cohort", "c.csv"]).config == "b.yaml"
    assert parse(["--config", "a.yaml", *fusion, "--config", "b.yaml"]).config == "b.yaml"  # the last one given
    assert parse(fusion).config is None
    assert parse(["import", "blood", "x.csv", "--config", "b.yaml"]).config == "b.yaml"


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["audit"],
        ["retry", "--job", "1"],
        ["train", "ar-signature", "--features", "P_a"],
        ["analyse-radiomics", "--out", "unused"],
    ],
)
def test_reading_commands_refuse_to_create_an_index(tmp_path: Path, make_settings, capsys, command) -> None:
    config, index = _config(tmp_path, make_settings, with_index=False)
    assert cli_main([*command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"no index at {index.resolve()}" in err
    assert f"is --config pointing at the node's config? (config: {config})" in err
    assert not index.parent.exists()  # neither the index nor its storage root was made


def test_without_a_config_the_refusal_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("IMMUNODE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["status"]) == 2
    assert "(config: embedded defaults (no --config, no $IMMUNODE_CONFIG))" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_imports_create_the_index(tmp_path: Path, make_settings, capsys) -> None:
    config, index = _config(tmp_path, make_settings, with_index=False)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,therapy_start\nP1,2024-01-01\n")
    assert cli_main(["import", "clinical", str(clinical), "--config", str(config)]) == 0
    assert index.exists() and "1 new" in capsys.readouterr().out
    assert cli_main(["status", "--config", str(config)]) == 0
