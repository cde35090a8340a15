"""Generator of synthetic whole-body FDG PET/CT studies with known lesions, in several vendors' header styles.

Geometry: a body-shaped ellipse cylinder with lungs, a liver and spherical lesions, blurred with the
scanner's point-spread function, stored as int16 with per-slice RescaleSlope as real scanners do.
Vendor styles:
- "siemens": Units BQML, DecayCorrection START, RadiopharmaceuticalStartDateTime.
- "ge": Units BQML, RadiopharmaceuticalStartTime only, GE private scan date-time (0009,100D),
  SeriesTime rewritten after the acquisition (post-processing), so the private tag is needed.
- "philips": Units CNTS with the Philips SUV scale factor (7053,1000).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    RTStructureSetStorage,
    generate_uid,
)
from scipy import ndimage

F18_HALF_LIFE_S = 6586.2


@dataclass(frozen=True)
class SyntheticLesion:
    centre_mm: tuple[float, float, float]  # patient x, y, z
    radius_mm: float
    suv: float


@dataclass(frozen=True)
class SyntheticStudy:
    study_uid: str
    pet_series_uid: str
    ct_series_uid: str
    pet_files: tuple[Path, ...]
    ct_files: tuple[Path, ...]
    lesions: tuple[SyntheticLesion, ...]
    spacing_mm: tuple[float, float, float]  # x, y, z


DEFAULT_LESIONS = (
    SyntheticLesion((-60.0, -10.0, 80.0), 12.0, 8.0),  # lung nodule
    SyntheticLesion((50.0, 20.0, 40.0), 9.0, 6.0),  # mediastinal node
    SyntheticLesion((30.0, 30.0, -40.0), 15.0, 10.0),  # liver metastasis
    SyntheticLesion((-40.0, 40.0, -100.0), 10.0, 5.0),  # bone lesion
)


PHYSIOLOGICAL_LESIONS = (
    SyntheticLesion((-60.0, -10.0, 60.0), 10.0, 7.0),  # lung nodule
    SyntheticLesion((-20.0, 30.0, 20.0), 9.0, 6.0),  # mediastinal node
    SyntheticLesion((10.0, 10.0, -20.0), 12.0, 9.0),  # liver metastasis
    SyntheticLesion((-100.0, 40.0, -130.0), 9.0, 6.0),  # bone lesion
)


# A head-and-neck FDG-PET/CT (3 mm voxels, the brain cut by the top of the field of view) with the normal
# uptake that real studies show around head-and-neck cancer, and lesions touching it, shaped after the Siemens
# study in which all eleven expert lesions lay in one connected region with physiological uptake.
HEAD_NECK_SHAPE = (90, 96, 96)
HEAD_NECK_SPACING = (3.0, 3.0, 3.0)
HEAD_NECK_LESIONS = (
    SyntheticLesion((-22.0, 5.0, 8.0), 11.0, 11.0),  # primary, right tonsil (engulfing it)
    SyntheticLesion((-40.0, -18.0, -4.0), 8.0, 8.0),  # right level II node, touching the submandibular gland
    SyntheticLesion((-34.0, -2.0, -38.0), 8.0, 8.0),  # right level III node
    SyntheticLesion((38.0, -14.0, -20.0), 6.0, 6.5),  # left level II node, touching the submandibular gland
    SyntheticLesion((-10.0, 28.0, 22.0), 6.0, 7.0),  # retropharyngeal node below the skull base
    SyntheticLesion((30.0, 40.0, 45.0), 7.0, 9.0),  # skull-base lesion next to the brain
    SyntheticLesion((14.0, -22.0, -58.0), 7.0, 7.0),  # left level IV node next to the vocal cords
)


def _head_neck_phantom(shape_zyx, spacing_xyz, origin_xyz, lesions, blur_fwhm_mm=6.0):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    px = origin_xyz[0] + x * spacing_xyz[0]
    py = origin_xyz[1] + y * spacing_xyz[1]
    pz = origin_xyz[2] + z * spacing_xyz[2]
    head = _ellipsoid(px, py, pz, (0, 5, 95), (78, 92, 80))
    neck = ((px / 58.0) ** 2 + ((py - 8) / 62.0) ** 2 <= 1) & (pz > -90) & (pz <= 60)
    shoulders = ((px / 175.0) ** 2 + ((py - 10) / 110.0) ** 2 <= 1) & (pz <= -70)
    body = head | neck | shoulders
    suv = np.where(body, 1.0, 0.02)
    hu = np.where(body, 40.0, -1000.0)
    for side in (-1, 1):
        lung = _ellipsoid(px, py, pz, (70 * side, 15, -170), (50, 60, 75))
        suv[lung], hu[lung] = 0.4, -850.0
    skull = _ellipsoid(px, py, pz, (0, 15, 100), (70, 83, 59)) & ~_ellipsoid(px, py, pz, (0, 15, 100), (62, 75, 51))
    suv[skull], hu[skull] = 1.0, 1200.0
    brain = _ellipsoid(px, py, pz, (0, 15, 100), (62, 75, 51))
    suv[brain], hu[brain] = 9.0, 35.0
    tongue = _ellipsoid(px, py, pz, (0, -8, 12), (26, 24, 14))
    suv[tongue] = 2.6  # tongue base and pharyngeal muscle: moderately avid, bridging the tonsils
    # Pharyngeal constrictors, pterygoids and prevertebral muscle, up through the skull base: mildly avid, they
    # join everything above SUV 2.5 from the neck to the brain into one connected region, as in the real study.
    muscles = ((px / 34.0) ** 2 + ((py - 8) / 30.0) ** 2 <= 1) & (pz > -75) & (pz < 52)
    suv[muscles & (suv < 2.7)] = 2.7
    for side in (-1, 1):
        for organ, (centre, radii, value) in {
            "tonsil": ((20 * side, 5, 10), (6, 8, 10), 4.5),
            "parotid": ((52 * side, 20, 28), (12, 16, 20), 3.0),
            "submandibular": ((32 * side, -22, -6), (10, 10, 9), 3.0),
            "vocal cord": ((6 * side, -14, -48), (3, 7, 5), 3.5),
        }.items():
            if organ == "tonsil" and side == -1:
                continue  # the right tonsil is the primary tumour
            suv[_ellipsoid(px, py, pz, centre, radii)] = value
        fat = _ellipsoid(px, py, pz, (62 * side, 12, -66), (12, 12, 10))
        suv[fat], hu[fat] = 4.0, -100.0  # supraclavicular brown fat
    airway = ((px / 8.0) ** 2 + ((py + 5) / 9.0) ** 2 <= 1) & (pz > -130) & (pz < 30)
    suv[airway], hu[airway] = 0.05, -1000.0
    for lesion in lesions:
        cx, cy, cz = lesion.centre_mm
        inside = (px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2 <= lesion.radius_mm**2
        suv[inside], hu[inside] = lesion.suv, 45.0
    sigma_vox = [blur_fwhm_mm / 2.3548 / s for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    return ndimage.gaussian_filter(suv, sigma_vox), hu


# A whole-body phantom with physiological uptake and lesions next to the brain, the bladder and the heart.
WHOLE_BODY_NEIGHBOUR_LESIONS = PHYSIOLOGICAL_LESIONS + (
    SyntheticLesion((82.0, 0.0, 192.0), 7.0, 8.0),  # beside the brain, outside the skull
    SyntheticLesion((56.0, -12.0, -200.0), 8.0, 7.0),  # pelvic node beside the bladder
    SyntheticLesion((-30.0, -30.0, 75.0), 8.0, 8.0),  # mediastinal node beside the heart
)


def _ellipsoid(px, py, pz, centre, radii):
    return sum(((p - c) / r) ** 2 for p, c, r in zip((px, py, pz), centre, radii)) <= 1.0


def _add_physiological_uptake(px, py, pz, suv, hu):
    """Brain (with skull on CT), myocardium around the blood pool, kidneys, ureters and a full bladder."""
    skull = _ellipsoid(px, py, pz, (0, 0, 197), (68, 78, 48))
    suv[skull], hu[skull] = 1.0, 1200.0
    brain = _ellipsoid(px, py, pz, (0, 0, 197), (60, 70, 40))
    suv[brain], hu[brain] = 9.0, 35.0
    heart = _ellipsoid(px, py, pz, (30, -10, 95), (40, 40, 45))
    suv[heart] = 7.0
    suv[_ellipsoid(px, py, pz, (30, -10, 95), (27, 27, 32))] = 1.5
    for side in (-1, 1):
        kidney = _ellipsoid(px, py, pz, (75 * side, 55, -60), (25, 22, 45))
        suv[kidney], hu[kidney] = 5.0, 35.0
        # Ureter: a 6 mm tube from the kidney down towards the bladder.
        t = np.clip((pz + 100) / -80.0, 0, 1)
        axis_x, axis_y = 75 * side + t * (20 - 75) * side, 55 + t * (-10 - 55)
        tube = ((px - axis_x) ** 2 + (py - axis_y) ** 2 <= 9.0) & (pz <= -100) & (pz >= -180)
        suv[tube] = 6.0
    bladder = _ellipsoid(px, py, pz, (0, -10, -200), (35, 35, 35))
    suv[bladder], hu[bladder] = 20.0, 10.0


def _phantom(shape_zyx, spacing_xyz, origin_xyz, lesions, blur_fwhm_mm=6.0, physiological=False):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    px = origin_xyz[0] + x * spacing_xyz[0]
    py = origin_xyz[1] + y * spacing_xyz[1]
    pz = origin_xyz[2] + z * spacing_xyz[2]
    body = (px / 160.0) ** 2 + (py / 110.0) ** 2 <= 1.0
    suv = np.where(body, 1.0, 0.02)
    lungs = (((px + 70) / 50.0) ** 2 + (py / 60.0) ** 2 + ((pz - 80) / 90.0) ** 2 <= 1) | (
        ((px - 70) / 50.0) ** 2 + (py / 60.0) ** 2 + ((pz - 80) / 90.0) ** 2 <= 1
    )
    suv[lungs] = 0.4
    liver = ((px - 40) / 80.0) ** 2 + ((py - 20) / 60.0) ** 2 + ((pz + 40) / 60.0) ** 2 <= 1
    suv[liver] = 2.0
    hu = np.where(body, 40.0, -1000.0)
    hu[lungs] = -850.0
    hu[liver] = 60.0
    if physiological:
        _add_physiological_uptake(px, py, pz, suv, hu)
    for lesion in lesions:
        cx, cy, cz = lesion.centre_mm
        inside = (px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2 <= lesion.radius_mm**2
        suv[inside] = lesion.suv
        hu[inside] = 45.0
    sigma_vox = [blur_fwhm_mm / 2.3548 / s for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    return ndimage.gaussian_filter(suv, sigma_vox), hu


def _base(modality, study_uid, series_uid, frame_uid, sop_class, when, patient_id, vendor):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "IMMUNODE-TEST"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.PatientWeight = 72.5
    ds.PatientSize = 1.68
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}[vendor]
    ds.ManufacturerModelName = "Synthetic"
    ds.SeriesNumber = 2 if modality == "PT" else 1
    ds.SeriesDescription = f"WB {'PET AC' if modality == 'PT' else 'CT'} synthetic"
    ds.BodyPartExamined = "WHOLEBODY"
    ds.PatientPosition = "FFS"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return ds


def write_study(
    folder: Path,
    vendor: str = "siemens",
    lesions: tuple[SyntheticLesion, ...] = DEFAULT_LESIONS,
    shape_zyx: tuple[int, int, int] = (70, 96, 96),
    spacing_xyz: tuple[float, float, float] = (4.0, 4.0, 4.0),
    patient_id: str = "SYN001",
    study_uid: str | None = None,
    with_ct: bool = True,
    dose_bq: float | None = 3.7e8,
    physiological: bool = False,
    head_and_neck: bool = False,
) -> SyntheticStudy:
    """Write a PET (and CT) series into folder/PT and folder/CT; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    pet_uid, ct_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = (
        -(shape_zyx[2] - 1) * spacing_xyz[0] / 2,
        -(shape_zyx[1] - 1) * spacing_xyz[1] / 2,
        -(shape_zyx[0] - 1) * spacing_xyz[2] / 2,
    )
    if head_and_neck:
        suv, hu = _head_neck_phantom(shape_zyx, spacing_xyz, origin, lesions)
    else:
        suv, hu = _phantom(shape_zyx, spacing_xyz, origin, lesions, physiological=physiological)
    injection = datetime(2026, 3, 2, 9, 5, 0)
    scan_start = injection + timedelta(minutes=62)
    decay_s = (scan_start - injection).total_seconds()
    weight_g = 72.5 * 1000
    decayed_dose = (dose_bq or 3.7e8) * 2 ** (-decay_s / F18_HALF_LIFE_S)
    bqml = suv * decayed_dose / weight_g
    pet_files, ct_files = [], []
    rng = np.random.default_rng(7)
    order = rng.permutation(shape_zyx[0])  # instance numbers deliberately not in geometric order
    for k in range(shape_zyx[0]):
        z = origin[2] + k * spacing_xyz[2]
        ds = _base(
            "PT", study_uid, pet_uid, frame_uid, PositronEmissionTomographyImageStorage, scan_start, patient_id, vendor
        )
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [origin[0], origin[1], z]
        ds.SliceLocation = z
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ds.SliceThickness = spacing_xyz[2]
        ds.Rows, ds.Columns = shape_zyx[1], shape_zyx[2]
        ds.PixelRepresentation = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["ATTN", "SCAT", "DECY", "RAN", "NORM", "DTIM"]
        ds.DecayCorrection = "START"
        ds.CountsSource = "EMISSION"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM"
        ds.ImageIndex = k + 1
        ds.NumberOfSlices = shape_zyx[0]
        ds.FrameReferenceTime = 0
        ds.ActualFrameDuration = 120000
        ds.AcquisitionTime = (scan_start + timedelta(seconds=30 * (k // 20))).strftime("%H%M%S")
        ds.SeriesTime = scan_start.strftime("%H%M%S")
        ds.DecayFactor = 1.0
        ds.DoseCalibrationFactor = 1.0
        ds.ContentTime = ds.AcquisitionTime
        info = Dataset()
        info.Radiopharmaceutical = "Fluorodeoxyglucose"
        info.RadionuclideHalfLife = F18_HALF_LIFE_S
        info.RadionuclidePositronFraction = 0.97
        if dose_bq is not None:
            info.RadionuclideTotalDose = dose_bq
        nuclide = Dataset()
        nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
        info.RadionuclideCodeSequence = [nuclide]
        values = bqml[k]
        if vendor == "siemens":
            ds.Units = "BQML"
            info.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
            info.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
        elif vendor == "ge":
            ds.Units = "BQML"
            info.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.00")
            ds.SeriesTime = (scan_start + timedelta(minutes=25)).strftime("%H%M%S")
            ds.AcquisitionTime = (scan_start + timedelta(seconds=150)).strftime("%H%M%S")
            ds.FrameReferenceTime = 0
            ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(
                0x0D, "DT", scan_start.strftime("%Y%m%d%H%M%S")
            )
        else:
            ds.Units = "CNTS"
            info.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
            counts_per_bqml = 0.25
            values = bqml[k] * counts_per_bqml
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            block.add_new(0x00, "DS", f"{weight_g / decayed_dose / counts_per_bqml:.10g}")
            block.add_new(0x09, "DS", f"{1 / counts_per_bqml:.10g}")
        ds.RadiopharmaceuticalInformationSequence = [info]
        slope = max(float(values.max()), 1e-6) / 32000.0
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = 0
        ds.RescaleType = "BQML" if ds.Units == "BQML" else "US"
        stored = np.round(values / float(ds.RescaleSlope)).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = folder / "PT" / f"pt_{k:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        pet_files.append(path)
        if with_ct:
            ct = _base(
                "CT",
                study_uid,
                ct_uid,
                frame_uid,
                CTImageStorage,
                scan_start - timedelta(minutes=3),
                patient_id,
                vendor,
            )
            ct.SOPInstanceUID = generate_uid()
            ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
            ct.InstanceNumber = k + 1
            ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ct.ImagePositionPatient = [origin[0], origin[1], z]
            ct.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
            ct.SliceThickness = spacing_xyz[2]
            ct.Rows, ct.Columns = shape_zyx[1], shape_zyx[2]
            ct.PixelRepresentation = 1
            ct.RescaleSlope, ct.RescaleIntercept, ct.RescaleType = 1, -1024, "HU"
            ct.KVP = 120
            ct.AcquisitionNumber = 1
            ct.PixelData = np.round(hu[k] + 1024).astype(np.int16).tobytes()
            ct_path = folder / "CT" / f"ct_{k:04d}.dcm"
            ct_path.parent.mkdir(parents=True, exist_ok=True)
            ct.save_as(ct_path, enforce_file_format=True)
            ct_files.append(ct_path)
    return SyntheticStudy(study_uid, pet_uid, ct_uid, tuple(pet_files), tuple(ct_files), lesions, spacing_xyz)


def _save_rtstruct(
    path: Path, image: Path, rois: list[tuple[str, list[np.ndarray]]], types: dict[str, str] | None = None
) -> Path:
    """A reader's RT Structure Set in the image's study and frame of reference: one ROI per (name, closed
    planar contours as N x 3 patient points); RT ROI Interpreted Type GTV unless `types` names another."""
    reference = pydicom.dcmread(image, stop_before_pixels=True)
    frame_uid = reference.FrameOfReferenceUID
    ds = _base(
        "RTSTRUCT",
        reference.StudyInstanceUID,
        generate_uid(),
        frame_uid,
        RTStructureSetStorage,
        datetime(2026, 3, 2, 11, 0),
        reference.PatientID,
        "siemens",
    )
    ds.IssuerOfPatientID = reference.get("IssuerOfPatientID", "")
    ds.StudyDate, ds.StudyTime = reference.StudyDate, reference.StudyTime
    for keyword in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "ImageOrientationPatient",
        "PatientPosition",
        "BodyPartExamined",
        "PositionReferenceIndicator",
    ):
        delattr(ds, keyword)
    ds.Manufacturer = "Reader workstation"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesNumber = 50
    ds.StructureSetLabel = "Lesions"
    ds.StructureSetDate, ds.StructureSetTime = reference.StudyDate, "110000"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = [frame]
    structures, contours, observations = [], [], []
    for number, (name, polygons) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame_uid, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        structures.append(roi)
        items = []
        for points in polygons:
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            contour.ContourData = [f"{v:.2f}" for v in points.flatten()]
            items.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = number, [255, 0, 0]
        roi_contour.ContourSequence = items
        contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = (types or {}).get(name, "GTV")
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = structures, contours, observations
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(path: Path, study: SyntheticStudy, lesions: tuple[SyntheticLesion, ...]) -> Path:
    """A reader's RT Structure Set contouring each lesion on every PET slice it crosses (a 16-gon of the
    sphere's section), as a reader's volume of interest would be drawn."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    slice_z = sorted(
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in study.pet_files
    )
    rois = []
    for number, lesion in enumerate(lesions, start=1):
        cx, cy, cz = lesion.centre_mm
        polygons = []
        for z in slice_z:
            if abs(z - cz) >= lesion.radius_mm:
                continue
            r = np.sqrt(lesion.radius_mm**2 - (z - cz) ** 2)
            polygons.append(np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles), np.full(16, z)]))
        rois.append((f"L{number}", polygons))
    return _save_rtstruct(path, study.pet_files[0], rois)


@dataclass(frozen=True)
class CtLesionSpec:
    label: str  # RTSTRUCT ROI name, e.g. "Primary tumour", "Met liver", "LN mediastinal"
    centre_mm: tuple[float, float, float]  # in the patient's anatomy (before the scan's shift)
    radius_mm: float
    hu: float = 60.0


# A longitudinal pair for the CT method, with known changes.
BASELINE_LESIONS = (
    CtLesionSpec("Primary tumour", (-55, 0, 30), 12),
    CtLesionSpec("Met liver", (40, 10, -45), 9),
    CtLesionSpec("LN mediastinal", (0, -20, 20), 9),
    CtLesionSpec("Met liver 2", (60, 30, -30), 7),
)
# Follow-up: primary grows (progressive), liver metastasis shrinks, node stable, liver metastasis 2 gone,
# two new metastases; the patient lies 6, -4, 9 mm off the baseline position.
FOLLOW_UP_LESIONS = (
    CtLesionSpec("Primary tumour", (-55, 0, 30), 15),
    CtLesionSpec("Met liver", (40, 10, -45), 6),
    CtLesionSpec("LN mediastinal", (0, -20, 20), 9),
    CtLesionSpec("Met new", (-20, 40, -40), 7),
    CtLesionSpec("Met new 2", (20, -40, -10), 6),
)
SHIFT_MM = (6.0, -4.0, 9.0)


@dataclass(frozen=True)
class SyntheticCtStudy:
    study_uid: str
    ct_series_uid: str
    ct_files: tuple[Path, ...]
    rtstruct: Path | None


def write_ct_study(
    folder: Path,
    lesions: tuple[CtLesionSpec, ...],
    study_date: str,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    patient_id: str = "SYN001",
    issuer: str = "IMMUNODE-TEST",
    shape_zyx: tuple[int, int, int] = (36, 80, 96),
    spacing_xyz: tuple[float, float, float] = (3.0, 3.0, 4.0),
    with_rtstruct: bool = True,
    seed: int = 1,
) -> SyntheticCtStudy:
    """A chest-abdomen CT (body, lungs, liver, spine) with textured spherical lesions, the whole anatomy moved
    by `shift_mm` in the scanner (a patient positioned differently), and an RTSTRUCT contouring every lesion
    slice by slice under its label."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(shape_zyx[::-1], spacing_xyz))
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    # Anatomy coordinates of each voxel: scanner position minus the shift.
    ax = origin[0] + x * spacing_xyz[0] - shift_mm[0]
    ay = origin[1] + y * spacing_xyz[1] - shift_mm[1]
    az = origin[2] + z * spacing_xyz[2] - shift_mm[2]
    body = (ax / 130.0) ** 2 + (ay / 95.0) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0)
    lungs = (((ax + 60) / 40.0) ** 2 + (ay / 50.0) ** 2 + ((az - 30) / 60.0) ** 2 <= 1) | (
        ((ax - 60) / 40.0) ** 2 + (ay / 50.0) ** 2 + ((az - 30) / 60.0) ** 2 <= 1
    )
    hu[lungs] = -850.0
    hu[((ax - 35) / 60.0) ** 2 + ((ay - 10) / 45.0) ** 2 + ((az + 45) / 40.0) ** 2 <= 1] = 60.0  # liver
    hu[(ax / 12.0) ** 2 + ((ay - 70) / 12.0) ** 2 <= 1] = 700.0  # spine
    rng = np.random.default_rng(seed)
    for lesion in lesions:
        cx, cy, cz = lesion.centre_mm
        inside = (ax - cx) ** 2 + (ay - cy) ** 2 + (az - cz) ** 2 <= lesion.radius_mm**2
        hu[inside] = lesion.hu + rng.normal(0, 15, int(inside.sum()))  # heterogeneous: texture for radiomics
    hu += rng.normal(0, 5, hu.shape)
    when = datetime.strptime(study_date, "%Y%m%d").replace(hour=10)
    files = []
    for k in range(shape_zyx[0]):
        ct = _base("CT", study_uid, series_uid, frame_uid, CTImageStorage, when, patient_id, "siemens")
        ct.IssuerOfPatientID = issuer
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ct.InstanceNumber = k + 1
        ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ct.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing_xyz[2]]
        ct.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ct.SliceThickness = spacing_xyz[2]
        ct.Rows, ct.Columns = shape_zyx[1], shape_zyx[2]
        ct.PixelRepresentation = 1
        ct.RescaleSlope, ct.RescaleIntercept, ct.RescaleType = 1, -1024, "HU"
        ct.KVP = 120
        ct.AcquisitionNumber = 1
        ct.PixelData = np.round(np.clip(hu[k] + 1024, 0, 4095)).astype(np.int16).tobytes()
        path = folder / "CT" / f"ct_{k:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ct.save_as(path, enforce_file_format=True)
        files.append(path)
    rtstruct = None
    if with_rtstruct:
        rtstruct = _ct_rtstruct(folder / "RS.dcm", files[0], lesions, shift_mm, origin[2], spacing_xyz[2], shape_zyx[0])
    return SyntheticCtStudy(study_uid, series_uid, tuple(files), rtstruct)


def _ct_rtstruct(path, first_ct, lesions, shift_mm, z0, dz, slices):
    """Every lesion contoured on each CT slice it crosses (circles of the sphere's section)."""
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    rois = []
    for lesion in lesions:
        cx, cy, cz = (c + s for c, s in zip(lesion.centre_mm, shift_mm))
        polygons = []
        for k in range(slices):
            zk = z0 + k * dz
            if abs(zk - cz) >= lesion.radius_mm:
                continue
            r = np.sqrt(lesion.radius_mm**2 - (zk - cz) ** 2)
            polygons.append(np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles), np.full(32, zk)]))
        rois.append((lesion.label, polygons))
    return _save_rtstruct(path, first_ct, rois)


def write_rt_plan_and_dose(folder: Path, image: Dataset) -> tuple[Path, Path]:
    """An RT Plan (no pixel data) and a multi-frame RT Dose in the image's study and frame of reference, as a
    planning system leaves them beside the images; no pipeline uses them, a PACS forwards them anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = Dataset()
    plan.file_meta = FileMetaDataset()
    plan.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plan.SOPClassUID = plan.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"):
        setattr(plan, keyword, image.get(keyword, ""))
    plan.StudyInstanceUID, plan.FrameOfReferenceUID = image.StudyInstanceUID, image.FrameOfReferenceUID
    plan.SeriesInstanceUID = generate_uid()
    plan.Modality, plan.SeriesNumber, plan.InstanceNumber = "RTPLAN", 90, 1
    plan.StudyDate, plan.StudyTime = image.StudyDate, image.get("StudyTime", "")
    plan.RTPlanLabel, plan.RTPlanGeometry = "PLAN1", "PATIENT"
    plan_path = folder / "rtplan.dcm"
    plan.save_as(plan_path, enforce_file_format=True)

    dose = Dataset()
    dose.file_meta = FileMetaDataset()
    dose.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dose.SOPClassUID = dose.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"  # RT Dose
    dose.SOPInstanceUID = dose.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"):
        setattr(dose, keyword, image.get(keyword, ""))
    dose.StudyInstanceUID, dose.FrameOfReferenceUID = image.StudyInstanceUID, image.FrameOfReferenceUID
    dose.SeriesInstanceUID = generate_uid()
    dose.Modality, dose.SeriesNumber, dose.InstanceNumber = "RTDOSE", 91, 1
    dose.StudyDate, dose.StudyTime = image.StudyDate, image.get("StudyTime", "")
    frames, rows, columns = 4, 8, 8
    dose.SamplesPerPixel, dose.PhotometricInterpretation = 1, "MONOCHROME2"
    dose.BitsAllocated, dose.BitsStored, dose.HighBit, dose.PixelRepresentation = 32, 32, 31, 0
    dose.Rows, dose.Columns, dose.NumberOfFrames = rows, columns, frames
    dose.PixelSpacing = [5.0, 5.0]
    dose.ImagePositionPatient = list(image.ImagePositionPatient)
    dose.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dose.GridFrameOffsetVector = [5.0 * k for k in range(frames)]
    dose.FrameIncrementPointer = 0x3004000C
    dose.DoseUnits, dose.DoseType, dose.DoseSummationType, dose.DoseGridScaling = "GY", "PHYSICAL", "PLAN", 1e-4
    dose.PixelData = (np.arange(frames * rows * columns, dtype=np.uint32) * 10).tobytes()
    dose_path = folder / "rtdose.dcm"
    dose.save_as(dose_path, enforce_file_format=True)
    return plan_path, dose_path


@dataclass(frozen=True)
class PlanningCt:
    study_uid: str
    ct_files: tuple[Path, ...]
    rtstruct: Path
    gtv_centre_mm: tuple[float, float, float]
    gtv_radius_mm: float


def write_planning_ct(
    folder: Path,
    study_date: str,
    shape_zyx: tuple[int, int, int] = (136, 512, 512),
    spacing_xyz: tuple[float, float, float] = (0.977, 0.977, 3.0),
    patient_id: str = "LUNG1-001",
    frame_uid: str | None = None,
    seed: int = 3,
) -> PlanningCt:
    """Shaped like a real de-identified lung planning CT: 136 slices of 512 x 512, Patient Identity Removed
    YES without a De-identification Method, and an RTSTRUCT with GTV-1 (type GTV) inside the left lung and
    Lung-Left, Lung-Right and Spinal-Cord (type ORGAN); the left lung's contour covers the GTV, as
    planning contours often do. Written slice by slice (a 512 x 512 x 136 float volume would take 280 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    frame_uid = frame_uid or generate_uid()
    origin = tuple(-(n - 1) * sp / 2 for n, sp in zip(shape_zyx[::-1], spacing_xyz))
    x = origin[0] + np.arange(shape_zyx[2]) * spacing_xyz[0]
    y = origin[1] + np.arange(shape_zyx[1]) * spacing_xyz[1]
    ay, ax = np.meshgrid(y, x, indexing="ij")
    gtv_centre, gtv_radius = (75.0, -10.0, 20.0), 22.0
    lungs = {"Lung-Left": (80.0, 0.0, 10.0, 60.0, 75.0, 150.0), "Lung-Right": (-80.0, 0.0, 10.0, 60.0, 75.0, 150.0)}
    rng = np.random.default_rng(seed)
    when = datetime.strptime(study_date, "%Y%m%d").replace(hour=9)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    contours: dict[str, list[np.ndarray]] = {"GTV-1": [], "Lung-Left": [], "Lung-Right": [], "Spinal-Cord": []}
    files = []
    for k in range(shape_zyx[0]):
        z = origin[2] + k * spacing_xyz[2]
        hu = np.where((ax / 160.0) ** 2 + (ay / 110.0) ** 2 <= 1.0, 30.0, -1000.0)
        for name, (cx, cy, cz, rx, ry, rz) in lungs.items():
            t = 1 - ((z - cz) / rz) ** 2
            if t > 0:
                a, b = rx * np.sqrt(t), ry * np.sqrt(t)
                hu[((ax - cx) / a) ** 2 + ((ay - cy) / b) ** 2 <= 1] = -850.0
                contours[name].append(
                    np.column_stack([cx + a * np.cos(angles), cy + b * np.sin(angles), np.full(48, z)])
                )
        cord = (ax / 7.0) ** 2 + ((ay - 75.0) / 7.0) ** 2 <= 1
        hu[(ax / 16.0) ** 2 + ((ay - 75.0) / 16.0) ** 2 <= 1] = 700.0
        hu[cord] = 35.0
        contours["Spinal-Cord"].append(np.column_stack([7 * np.cos(angles), 75 + 7 * np.sin(angles), np.full(48, z)]))
        dz = z - gtv_centre[2]
        if abs(dz) < gtv_radius:
            r = np.sqrt(gtv_radius**2 - dz**2)
            inside = (ax - gtv_centre[0]) ** 2 + (ay - gtv_centre[1]) ** 2 <= r**2
            hu[inside] = 45.0 + rng.normal(0, 20, int(inside.sum()))
            contours["GTV-1"].append(
                np.column_stack(
                    [gtv_centre[0] + r * np.cos(angles), gtv_centre[1] + r * np.sin(angles), np.full(48, z)]
                )
            )
        hu += rng.normal(0, 8, hu.shape)
        ct = _base("CT", study_uid, series_uid, frame_uid, CTImageStorage, when, patient_id, "siemens")
        del ct.IssuerOfPatientID
        ct.PatientIdentityRemoved = "YES"  # and no De-identification Method: as in the research data set
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ct.InstanceNumber = k + 1
        ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ct.ImagePositionPatient = [origin[0], origin[1], z]
        ct.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ct.SliceThickness = spacing_xyz[2]
        ct.Rows, ct.Columns = shape_zyx[1], shape_zyx[2]
        ct.PixelRepresentation = 1
        ct.RescaleSlope, ct.RescaleIntercept, ct.RescaleType = 1, -1024, "HU"
        ct.KVP = 120
        ct.PixelData = np.round(np.clip(hu + 1024, 0, 4095)).astype(np.int16).tobytes()
        path = folder / "CT" / f"ct_{k:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ct.save_as(path, enforce_file_format=True)
        files.append(path)
    types = {"Lung-Left": "ORGAN", "Lung-Right": "ORGAN", "Spinal-Cord": "ORGAN"}
    rtstruct = _save_rtstruct(folder / "RS.dcm", files[0], list(contours.items()), types)
    return PlanningCt(study_uid, tuple(files), rtstruct, gtv_centre, gtv_radius)
