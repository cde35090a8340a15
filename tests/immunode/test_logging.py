"""The node's log: the third-party records that made most of it (pydicom's over-long values, pyradiomics' GLCM
note, alembic's set-up lines, highdicom's person-name warning quoting the patient's name) are dropped, each
triggered here by the real library; any other record of those libraries still comes through; `logging.format:
json` writes one JSON object a line."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from common.log_filters import DropNoise
from immunode.config import LoggingSettings
from immunode.logging_setup import configure_logging
from storage.database import Database


def _file_with_a_long_study_id(path: Path) -> Path:
    """A header as sts_002's (a real vendor's 18-character StudyID, VR SH allows 16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with pydicom_config.disable_value_validation():
        ds.StudyID = "S" * 18
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.save_as(path, enforce_file_format=True)
    return path


def _noise_and_signal(folder: Path) -> None:
    """Each noisy library doing what made the noise, and one record of each that must stay."""
    folder.mkdir()
    for _ in range(3):  # pydicom says it at every read
        assert pydicom.dcmread(_file_with_a_long_study_id(folder / "long.dcm")).StudyID == "S" * 18
    Database(f"sqlite:///{folder / 'index.sqlite3'}").dispose()  # alembic: set-up lines, then the migrations
    from radiomics import featureextractor

    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(100, 20, (8, 8, 8)).astype(np.float32))
    mask = sitk.GetImageFromArray(np.pad(np.ones((4, 4, 4), np.uint8), 2))
    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(glcm=["SumAverage", "JointAverage"])
    assert "original_glcm_SumAverage" in extractor.execute(image, mask)
    from highdicom.base import SOPClass

    SOPClass(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        series_number=1,
        sop_instance_uid="1.2.3.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
        instance_number=1,
        modality="SR",
        manufacturer="immunode tests",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_name="STS_002",
    )
    ds = Dataset()
    ds.SOPInstanceUID = "not..a..uid"  # pydicom's other warnings still come through
    logging.getLogger("alembic.runtime.migration").info("an alembic line that stays")


def _configured(tmp_path: Path, name: str) -> Path:
    log = tmp_path / f"node-{name}.log"
    configure_logging(LoggingSettings(level="INFO", file=log, format="json" if name == "json" else "text"))
    return log


NOISE = ("exceeds the maximum length", "GLCM is symmetrical", "Context impl", "Will assume")
PERSON_NAME = "is unlikely to represent the intended person name"


def test_third_party_noise_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    unfiltered = _configured(tmp_path, "unfiltered")
    for logger in ("pydicom", "radiomics.glcm", "alembic.runtime.migration"):
        for installed in [f for f in logging.getLogger(logger).filters if isinstance(f, DropNoise)]:
            logging.getLogger(logger).removeFilter(installed)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _noise_and_signal(tmp_path / "a")
    text = unfiltered.read_text()
    assert all(noise in text for noise in NOISE)  # what the libraries say without the filters
    assert any(PERSON_NAME in str(w.message) and "STS_002" in str(w.message) for w in said)
    log = _configured(tmp_path, "text")
    with warnings.catch_warnings(record=True) as said:  # the node's warning filters, as configure_logging set them
        _noise_and_signal(tmp_path / "b")
    logging.shutdown()
    text = log.read_text()
    assert "exceeds the maximum length" not in text
    assert "GLCM is symmetrical" not in text
    assert "Context impl" not in text and "Will assume" not in text
    assert not any(PERSON_NAME in str(w.message) for w in said)  # the patient's name never reaches the log
    assert not any("exceeds the maximum length" in str(w.message) for w in said)
    assert any("Invalid value for VR UI" in str(w.message) for w in said)  # other warnings still come through
    assert "Running upgrade" in text and "an alembic line that stays" in text
    assert "WARNING MainProcess pydicom: Invalid value for VR UI: 'not..a..uid'" in text


def test_json_log_lines(tmp_path: Path) -> None:
    log = _configured(tmp_path, "json")
    logging.getLogger("immunode.test").info("study %s complete", "1.2.3")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("immunode.test").exception("a job failed")
    _noise_and_signal(tmp_path / "c")
    logging.shutdown()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all({"time", "level", "process", "logger", "message"} <= set(r) for r in records)
    first = records[0]
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "immunode.test", "study 1.2.3 complete")
    failed = next(r for r in records if r["message"] == "a job failed")
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc_info"]
    messages = " ".join(r["message"] for r in records)
    assert "GLCM is symmetrical" not in messages and "exceeds the maximum length" not in messages
    assert any(r["logger"] == "pydicom" and "Invalid value for VR UI" in r["message"] for r in records)
