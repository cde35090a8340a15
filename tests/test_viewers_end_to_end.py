"""The node's results in the viewers readers use. Real studies of ../shared/data go, by dcmtk storescu, to
Orthanc (with its DICOMweb plugin) and to the node; the node's SEG and SR reach Orthanc by C-STORE; OHIF (the
npm registry's prebuilt @ohif/app, served on one origin with Orthanc's DICOMweb by viewers/serve.py) shows them
in headless Chromium, as a reader opens them: double-click on the series in the study browser.

- sts_003: the real cropped PET/CT (PET 30 x 29, CT 158 x 154 pixels) with its expert contours;
- sts_002: another real crop, odd-sized in both directions (PET 27 x 30, CT 143 x 161): frames whose pixel
  count is not a multiple of 8, where 1-bit encodings break in web viewers.

For each SEG: on every slice of its lesions (and the slice either side), the pixels OHIF colours are exactly
the SEG's mask, read back by highdicom (at each pixel centre; the ring of pixels next to the mask may carry the
outline); each segment has the colour the SEG recommends. For each SR: OHIF lists each lesion with its
measurement values. Every output is also read by dcmjs (OHIF's DICOM library) in Node, as highdicom reads it.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from immunode.config import parse_settings
from immunode.service import Node
from tests.conftest import SHARED_DATA, Orthanc, free_port, storescu, wait_until
from tests.viewers import OhifPage, chromium, ohif_server, read_with_dcmjs, require_viewers

STUDIES = ("sts_003", "sts_002")
OUTPUT_SERIES = {990: "PET SEG", 991: "PET SR", 992: "CT SEG", 993: "CT SR"}
SEG_OF = {"PET": 990, "CT": 992}
SR_OF = {"PET": 991, "CT": 993}


@dataclass(frozen=True)
class ViewedStudy:
    study_instance_uid: str
    outputs: dict[int, Path]  # series number -> the object as Orthanc holds it (downloaded)


@dataclass(frozen=True)
class Viewers:
    base_url: str
    context: object
    studies: dict[str, ViewedStudy]


def _study_files(name: str) -> list[Path]:
    return sorted((SHARED_DATA / name / "PET").glob("*.dcm")) + sorted((SHARED_DATA / name / "CT").glob("*.dcm"))


def _outputs_in(orthanc: Orthanc, study_uid: str, folder: Path) -> dict[int, Path] | None:
    found = {}
    for series in orthanc.series_of_study(study_uid):
        number = int(series.get("SeriesNumber", 0) or 0)
        if number in OUTPUT_SERIES:
            instances = orthanc.instances_of_series(series["SeriesInstanceUID"])
            if len(instances) != 1:
                return None
            path = folder / f"{number}.dcm"
            url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instances[0]['ID']}/file"
            with urllib.request.urlopen(url, timeout=30) as response:
                path.write_bytes(response.read())
            found[number] = path
    return found if set(found) == set(OUTPUT_SERIES) else None


@pytest.fixture(scope="module")
def viewers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewers]:
    require_viewers()
    root = tmp_path_factory.mktemp("viewers")
    orthanc = Orthanc(root / "orthanc", free_port(), free_port(), dicomweb=True)
    orthanc.start()
    settings = parse_settings(
        {
            "node": {"ae_title": "IMMUNODE", "host": "127.0.0.1", "port": free_port()},
            "peers": {"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
            "storage": {"root": str(root / "store"), "min_free_mb": 0},
            "routing": {
                "study_stable_s": 1.0,
                "poll_interval_s": 0.2,
                "rules": [
                    {"name": "pet", "pipeline": "pet_quant", "series": {"modality": "PT"}},
                    {"name": "ct", "pipeline": "ct_radiomics", "series": {"modality": "CT"}},
                ],
            },
            "workers": {"processes": 2},
            "dispatch": {"max_attempts": 4, "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "timeout_s": 30},
            "monitoring": {"port": 0},
            "destinations": [
                {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
            ],
        },
        "viewer test settings",
    )
    node = Node(settings)
    node.start()
    try:
        uids = {}
        for name in STUDIES:
            files = _study_files(name)
            sent = storescu(orthanc.dicom_port, files, called=orthanc.ae_title)  # the scanner's PACS copy
            assert sent.returncode == 0, sent.stderr
            sent = storescu(node.port, files)
            assert sent.returncode == 0, sent.stderr
            uids[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        studies = {}
        for name, uid in uids.items():
            folder = root / name
            folder.mkdir()
            outputs = wait_until(lambda: _outputs_in(orthanc, uid, folder), timeout_s=600, interval_s=1.0)
            studies[name] = ViewedStudy(uid, outputs)
        node.stop()
        with ohif_server(orthanc.dicomweb_url) as base_url, chromium(root / "chromium-profile") as context:
            yield Viewers(base_url, context, studies)
    finally:
        node.stop()
        orthanc.stop()


def _masks_by_source(seg_path: Path) -> tuple[hd.seg.Segmentation, dict[str, np.ndarray]]:
    """The union of the SEG's segments on each source image it references, read by highdicom."""
    seg = hd.seg.segread(seg_path)
    sources = [ref.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for ref in s.ReferencedInstanceSequence]
    pixels = seg.get_pixels_by_source_instance(
        sources, ignore_spatial_locations=True, assert_missing_frames_are_empty=True, rescale_fractional=False
    )
    stack = pixels if pixels.ndim == 3 else pixels.any(axis=-1)
    return seg, {uid: np.asarray(mask > 0) for uid, mask in zip(sources, stack)}


def _lesion_slices_and_neighbours(masks: dict[str, np.ndarray], order: list[str]) -> list[str]:
    with_lesion = {i for i, uid in enumerate(order) if masks.get(uid) is not None and masks[uid].any()}
    assert with_lesion, "the SEG has no voxel at all"
    wanted = {j for i in with_lesion for j in (i - 1, i, i + 1) if 0 <= j < len(order)}
    return [order[i] for i in sorted(wanted)]


def _source_order(seg: hd.seg.Segmentation, modality: str, study: str) -> list[str]:
    folder = SHARED_DATA / study / ("PET" if modality == "PET" else "CT")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    images = [h for h in headers if "ImagePositionPatient" in h]
    normal = np.cross(*np.reshape(np.asarray(images[0].ImageOrientationPatient, float), (2, 3)))
    images.sort(key=lambda h: float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))))
    return [str(h.SOPInstanceUID) for h in images]


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("modality", ["PET", "CT"])
def test_seg_is_drawn_exactly_where_its_mask_is(viewers: Viewers, study: str, modality: str) -> None:
    viewed = viewers.studies[study]
    seg, masks = _masks_by_source(viewed.outputs[SEG_OF[modality]])
    wanted = _lesion_slices_and_neighbours(masks, _source_order(seg, modality, study))
    page = OhifPage(viewers.context, viewers.base_url, viewed.study_instance_uid)
    try:
        viewport = page.open_segmentation(str(seg.SeriesDescription))
        drawn = {s.sop_instance_uid: s.tinted for s in page.drawn_slices(viewport, wanted)}
        colours = page.segment_colours(viewport)
        assert not page.errors, page.errors
    finally:
        page.close()
    assert set(drawn) == set(wanted), "OHIF did not show every slice of the lesions"
    for uid in wanted:
        mask = masks.get(uid)
        mask = np.zeros_like(drawn[uid]) if mask is None else mask
        near = ndimage.binary_dilation(mask, np.ones((3, 3), bool))
        missed, spilled = int((mask & ~drawn[uid]).sum()), int((drawn[uid] & ~near).sum())
        assert (missed, spilled) == (0, 0), f"{study} {modality} image {uid}: {missed} missed, {spilled} spilled"
    for segment in seg.SegmentSequence:
        assert "RecommendedDisplayCIELabValue" in segment, f"segment {segment.SegmentNumber} has no colour"
        expected = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        shown = colours[str(segment.SegmentLabel)]
        assert np.abs(np.subtract(shown, expected)).max() <= 2, (segment.SegmentLabel, shown, expected)


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("modality", ["PET", "CT"])
def test_sr_measurements_are_listed_with_their_values(viewers: Viewers, study: str, modality: str) -> None:
    viewed = viewers.studies[study]
    sr = hd.sr.srread(viewed.outputs[SR_OF[modality]])
    lesions = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        for m in group.get_measurements():
            lesions.setdefault(str(group.tracking_identifier), []).append((m.name.meaning, float(m.value)))
    assert lesions
    page = OhifPage(viewers.context, viewers.base_url, viewed.study_instance_uid)
    try:
        page.open_series(str(sr.SeriesDescription))
        first_value = f"{next(iter(lesions.values()))[0][1]:.2f}"
        page.page.get_by_text(first_value).first.wait_for(timeout=120_000)
        shown = page.text()
        assert not page.errors, page.errors
    finally:
        page.close()
    for label, measurements in lesions.items():
        assert label in shown, label
        for name, value in measurements:
            assert name in shown and f"{value:.2f}" in shown, (label, name, value)
    names = [name for values in lesions.values() for name, _ in values]
    assert all(names.count(n) == len(lesions) for n in set(names)), "one concept shown twice for a lesion"


def _hd_frames(seg_path: Path) -> list[tuple[int | None, str, np.ndarray]]:
    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
    frames = []
    for group, frame in zip(ds.PerFrameFunctionalGroupsSequence, pixels):
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber if "SegmentIdentificationSequence" in group else None
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frames.append((segment, str(source), frame))
    return frames


def test_every_output_reads_with_dcmjs_as_with_highdicom(viewers: Viewers) -> None:
    paths = [path for viewed in viewers.studies.values() for path in viewed.outputs.values()]
    for found, path in zip(read_with_dcmjs(paths), paths):
        if found["sopClassUid"].startswith("1.2.840.10008.5.1.4.1.1.66"):
            seg = hd.seg.segread(path)
            assert [s["label"] for s in found["segments"] if s["number"]] == [
                str(s.SegmentLabel) for s in seg.SegmentSequence if s.SegmentNumber
            ]
            expected = _hd_frames(path)
            assert len(found["frames"]) == len(expected)
            for frame, (segment, source, pixels) in zip(found["frames"], expected):
                read = np.frombuffer(frame["pixels"].encode(), np.uint8).reshape(pixels.shape) - ord("0")
                assert frame["segment"] == segment and frame["source"] == source
                assert np.array_equal(read > 0, pixels > 0), f"{path.name}: frame differs"
        else:
            sr = hd.sr.srread(path)
            values = sorted(
                round(float(m.value), 6)
                for g in sr.content.get_volumetric_roi_measurement_groups()
                for m in g.get_measurements()
            )

            def walk(items: list[dict]) -> list[float]:
                return [v for i in items for v in ([i["value"]] if i["valueType"] == "NUM" else []) + walk(i["children"])]

            measurements = next(c for c in found["content"] if c["concept"] == "Imaging Measurements")
            assert sorted(round(v, 6) for v in walk(measurements["children"])) == values
