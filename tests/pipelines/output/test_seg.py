"""SEG encodings, segment colours and lesion outlines of the shared output module, on a synthetic PET whose
frames are odd-sized (27 x 31 pixels: 837, not a multiple of 8), read back by highdicom and by dcmjs."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from common.states import OutputKind, SegEncoding
from pipelines.errors import OutputInvalid
from pipelines.output.gate import OutputWriter, validate_segmentation
from pipelines.output.numbers import SEG_ENCODING_OFFSET
from pipelines.output.seg import (
    build_segmentation,
    lesion_groups,
    lesion_regions,
    segment_colour,
    write_segmentations,
)
from pipelines.types import AlgorithmIdentity, SegmentedLesion
from tests.synthetic import write_study
from tests.viewers import read_with_dcmjs, require_viewers

IDENTITY = AlgorithmIdentity.of("test-segments", {"test": 1})
SHAPE = (12, 27, 31)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    study = write_study(tmp_path_factory.mktemp("pet"), with_ct=False, shape_zyx=SHAPE, lesions=())
    images = [pydicom.dcmread(p) for p in study.pet_files]
    return sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _lesion(number: int, offset: tuple[int, int, int], mask: np.ndarray) -> SegmentedLesion:
    return SegmentedLesion(number, f"Lesion {number}", f"2.25.{1000 + number}", offset, mask.astype(bool))


def _ball(radius: int) -> np.ndarray:
    z, y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1, -radius : radius + 1]
    return z**2 + y**2 + x**2 <= radius**2


SEPARATE = (_lesion(1, (2, 3, 4), _ball(2)), _lesion(2, (5, 14, 18), _ball(3)))
OVERLAPPING = (_lesion(1, (2, 3, 4), _ball(3)), _lesion(2, (3, 4, 5), _ball(2)))  # the second inside the first


def _masks(path: Path, sources: list[pydicom.Dataset], segments: int) -> np.ndarray:
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(
        [str(s.SOPInstanceUID) for s in sources],
        segment_numbers=list(range(1, segments + 1)),
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
        rescale_fractional=False,
    )
    return pixels > 0  # (slices, rows, columns, segments)


def _expected(lesions: tuple[SegmentedLesion, ...]) -> np.ndarray:
    full = np.zeros((*SHAPE, len(lesions)), bool)
    for i, lesion in enumerate(lesions):
        full[(*lesion.box(), i)] = lesion.mask
    return full


def test_each_encoding_asked_for_is_written_in_its_own_series_and_reads_back_whole(
    tmp_path: Path, sources: list[pydicom.Dataset]
) -> None:
    require_viewers()
    counter = iter(range(100))
    with OutputWriter(lambda: tmp_path / f"{next(counter)}.dcm") as writer:
        written = write_segmentations(
            writer, sources, SEPARATE, IDENTITY, "test", "test lesions", 990, list(SegEncoding), "1.2.3"
        )
    files = {f.seg_encodings: f for f in written.files}
    assert set(files) == {(e,) for e in SegEncoding}
    assert written.referenced is written.written[0] and written.referenced.SegmentationType == "FRACTIONAL"
    for (encoding,), file in files.items():
        ds = pydicom.dcmread(file.path)
        assert file.kind is OutputKind.SEG and ds.SeriesNumber == 990 + SEG_ENCODING_OFFSET[encoding]
        assert ds.SegmentationType == encoding.value
        assert ds.SOPClassUID == (
            "1.2.840.10008.5.1.4.1.1.66.7" if encoding is SegEncoding.LABELMAP else "1.2.840.10008.5.1.4.1.1.66.4"
        )
        assert ds.BitsAllocated == (1 if encoding is SegEncoding.BINARY else 8)
        assert np.array_equal(_masks(file.path, sources, 2), _expected(SEPARATE)), encoding
        described = [s for s in ds.SegmentSequence if s.SegmentNumber > 0]
        for segment, lesion in zip(described, SEPARATE, strict=True):
            assert segment.TrackingUID == lesion.tracking_uid
            assert tuple(segment.RecommendedDisplayCIELabValue) == segment_colour(lesion.tracking_uid).value
    # dcmjs (OHIF's DICOM library) gets the same frames, 1-bit ones included.
    paths = [f.path for f in written.files]
    for found, path in zip(read_with_dcmjs(paths), paths, strict=True):
        ds = pydicom.dcmread(path)
        expected = ds.pixel_array.reshape(len(found["frames"]), ds.Rows, ds.Columns)
        for frame, pixels in zip(found["frames"], expected, strict=True):
            read = np.frombuffer(frame["pixels"].encode(), np.uint8).reshape(pixels.shape) - ord("0")
            assert np.array_equal(read > 0, pixels > 0), path


def test_overlapping_lesions_keep_every_voxel_and_a_label_map_is_served_by_the_fractional_seg(
    tmp_path: Path, sources: list[pydicom.Dataset]
) -> None:
    counter = iter(range(100))
    with OutputWriter(lambda: tmp_path / f"{next(counter)}.dcm") as writer:
        written = write_segmentations(
            writer, sources, OVERLAPPING, IDENTITY, "test", "test", 990, [SegEncoding.LABELMAP, SegEncoding.BINARY], ""
        )
    (fractional, binary) = written.files
    assert fractional.seg_encodings == (SegEncoding.LABELMAP,)  # asked for a label map, got the FRACTIONAL SEG
    assert pydicom.dcmread(fractional.path).SegmentationType == "FRACTIONAL"
    assert binary.seg_encodings == (SegEncoding.BINARY,) and pydicom.dcmread(binary.path).SegmentationType == "BINARY"
    for file in written.files:
        assert np.array_equal(_masks(file.path, sources, 2), _expected(OVERLAPPING))


def test_colours_are_stable_per_tracked_lesion_and_saturated() -> None:
    first, again, other = segment_colour("2.25.1"), segment_colour("2.25.1"), segment_colour("2.25.2")
    assert first.value == again.value and first.value != other.value
    red, green, blue = first.to_rgb()
    assert max(red, green, blue) - min(red, green, blue) > 150  # visible over a grey image


def test_the_gate_refuses_a_segment_without_pixels(tmp_path: Path, sources: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="without a voxel"):
        build_segmentation(sources, (_lesion(1, (0, 0, 0), np.zeros((1, 2, 2))),), IDENTITY, "t", "t", 990)
    seg = build_segmentation(sources, SEPARATE, IDENTITY, "t", "t", 990, encoding=SegEncoding.BINARY)
    # A third segment described without a pixel, as a SEG of overwritten overlapping lesions had.
    extra = copy.deepcopy(seg.SegmentSequence[1])
    extra.SegmentNumber, extra.SegmentLabel = 3, "Lesion 3"
    seg.SegmentSequence.append(extra)
    path = tmp_path / "empty-segment.dcm"
    seg.save_as(path)
    with pytest.raises(OutputInvalid, match=r"without a pixel.*\[3\]"):
        validate_segmentation(path, 3)


def test_a_lesion_outline_follows_its_mask_on_every_slice(sources: list[pydicom.Dataset]) -> None:
    lesion = SEPARATE[1]
    regions = lesion_regions(lesion, sources)
    slices = lesion.offset[0] + np.flatnonzero(lesion.mask.any(axis=(1, 2)))
    on = [str(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for r in regions]
    assert set(on) == {str(sources[i].SOPInstanceUID) for i in slices}
    assert on[0] == str(sources[lesion.offset[0] + 3].SOPInstanceUID)  # the ball's widest slice first
    for region, uid in zip(regions, on, strict=True):
        plane = lesion.mask[[str(sources[i].SOPInstanceUID) for i in slices].index(uid)]
        points = region.value  # (column, row), 0,0 the top left corner of the first pixel
        assert np.array_equal(points[0], points[-1])
        rows, columns = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        # Through the edges between the lesion's pixels and the others: pixel r spans rows r to r + 1.
        assert points[:, 1].min() == pytest.approx(lesion.offset[1] + rows[0])
        assert points[:, 0].max() == pytest.approx(lesion.offset[2] + columns[-1] + 1)
    groups = lesion_groups(lesion, build_segmentation(sources, SEPARATE, IDENTITY, "t", "t", 990), sources)
    assert [g.reference_type for g in groups] == [codes.DCM.ReferencedSegment, codes.DCM.ImageRegion]
    assert groups[0].tracking_uid == groups[1].tracking_uid == lesion.tracking_uid
