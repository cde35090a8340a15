"""Synthetic DICOM whole-slide images (VL Whole Slide Microscopy Image Storage, TILED_FULL, JPEG baseline
tiles, one instance per pyramid level), written by the tests.

Made here, not taken from anywhere: an H&E-like slide is a pink tissue region on a white background; a
"responder" slide has dense clusters of small dark-violet nuclei planted in its tissue (a stand-in for an
immune infiltrate), a "non-responder" slide sparse ones. Like the real sample in ../shared/data, the slides
carry no Specimen or Optical Path module; unlike it they carry the Patient and Study modules (the node files
instances by patient).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage, generate_uid

PINK = np.array([232, 170, 200], dtype=float)
WHITE = np.array([244, 244, 244], dtype=float)
NUCLEUS = np.array([80, 40, 130], dtype=float)


@dataclass(frozen=True)
class SyntheticSlide:
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    files: tuple[Path, ...]  # level 0 first
    size: tuple[int, int]  # level 0 (columns, rows)
    infiltrated: bool


def slide_pixels(size: int, infiltrated: bool, seed: int) -> np.ndarray:
    """RGB uint8 [rows, columns, 3] of level 0 (0.5 µm/pixel): an elliptic tissue region with nuclei."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tissue = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.36) ** 2 < 1
    image = np.where(tissue[..., None], PINK, WHITE) + rng.normal(0, 6, (size, size, 3))
    count = int(size * size / (900 if infiltrated else 9000))
    centres = rng.integers(0, size, (count, 2))
    if infiltrated:  # clusters: nuclei around a few centres
        hubs = rng.integers(size // 5, 4 * size // 5, (6, 2))
        centres = hubs[rng.integers(0, len(hubs), count)] + rng.normal(0, size / 14, (count, 2)).astype(int)
    radius = 4
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    for y, x in np.clip(centres, radius, size - radius - 1):
        if tissue[y, x]:
            window = image[y - radius : y + radius + 1, x - radius : x + radius + 1]
            window[disk] = NUCLEUS + rng.normal(0, 8, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(tile: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _level_dataset(
    shape: tuple[int, int], tile: int, spacing_mm: float, identity: dict[str, str], level: int, frames: list[bytes]
) -> pydicom.Dataset:
    rows, columns = shape
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"]
    ds.Modality = "SM"
    ds.PatientID = identity["patient_id"]
    ds.PatientName = "Synthetic^Slide"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = identity["study"]
    ds.SeriesInstanceUID = identity["series"]
    ds.FrameOfReferenceUID = identity["frame_of_reference"]
    ds.StudyDate = identity["date"]
    ds.StudyTime = "100000"
    ds.ContentDate = identity["date"]
    ds.ContentTime = "100000"
    ds.AcquisitionDateTime = identity["date"] + "100000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = level + 1
    ds.Manufacturer = "immunode tests"
    ds.SeriesDescription = "synthetic H&E"
    ds.DimensionOrganizationType = "TILED_FULL"
    organisation = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([pydicom.Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organisation
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(frames)
    ds.Rows = tile
    ds.Columns = tile
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = "10"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.TotalPixelMatrixColumns = columns
    ds.TotalPixelMatrixRows = rows
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = columns * spacing_mm
    ds.ImagedVolumeHeight = rows * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.TotalPixelMatrixOriginSequence = Sequence([pydicom.Dataset()])
    ds.TotalPixelMatrixOriginSequence[0].XOffsetInSlideCoordinateSystem = 20.0
    ds.TotalPixelMatrixOriginSequence[0].YOffsetInSlideCoordinateSystem = 40.0
    shared = pydicom.Dataset()
    measures = pydicom.Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def write_slide(
    folder: Path,
    patient_id: str,
    infiltrated: bool,
    seed: int = 0,
    size: int = 1536,
    tile: int = 256,
    levels: int = 4,
    study_date: str = "20260110",
) -> SyntheticSlide:
    """A slide of `size`² pixels at 0.5 µm/pixel and `levels` pyramid levels (each half the previous)."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = {
        "patient_id": patient_id,
        "study": generate_uid(),
        "series": generate_uid(),
        "frame_of_reference": generate_uid(),
        "date": study_date,
    }
    pixels = slide_pixels(size, infiltrated, seed)
    files = []
    for level in range(levels):
        step = 2**level
        image = pixels if step == 1 else np.asarray(Image.fromarray(pixels).reduce(step))
        rows, columns = image.shape[:2]
        padded = np.full((-(-rows // tile) * tile, -(-columns // tile) * tile, 3), 244, np.uint8)
        padded[:rows, :columns] = image
        frames = [
            _jpeg(padded[y : y + tile, x : x + tile]) for y in range(0, rows, tile) for x in range(0, columns, tile)
        ]
        ds = _level_dataset(image.shape[:2], tile, 0.0005 * step, identity, level, frames)
        path = folder / f"level-{level}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return SyntheticSlide(patient_id, identity["study"], identity["series"], tuple(files), (size, size), infiltrated)


def write_large_instance(path: Path, megabytes: int) -> Path:
    """One whole-slide level of about `megabytes` MB (noise tiles, cycled), for memory measurements."""
    rng = np.random.default_rng(1)
    tiles = [_jpeg(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(4)]
    count = max(1, megabytes * 1024 * 1024 // len(tiles[0]))
    side = int(np.ceil(np.sqrt(count)))
    count = side * side
    identity = {
        "patient_id": "WSI-LARGE",
        "study": generate_uid(),
        "series": generate_uid(),
        "frame_of_reference": generate_uid(),
        "date": "20260110",
    }
    frames = [tiles[i % len(tiles)] for i in range(count)]
    ds = _level_dataset((side * 512, side * 512), 512, 0.0005, identity, 0, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
