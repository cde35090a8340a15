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
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, PositronEmissionTomographyImageStorage, generate_uid
from scipy import ndimage

from tests.synthetic_dicom import image_dataset, save_ct_slice, save_rtstruct

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
        ds = image_dataset(
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
            ct = image_dataset(
                "CT",
                study_uid,
                ct_uid,
                frame_uid,
                CTImageStorage,
                scan_start - timedelta(minutes=3),
                patient_id,
                vendor,
            )
            ct.AcquisitionNumber = 1
            stored = np.round(hu[k] + 1024)
            ct_files.append(save_ct_slice(ct, folder, k, (origin[0], origin[1], z), spacing_xyz, stored))
    return SyntheticStudy(study_uid, pet_uid, ct_uid, tuple(pet_files), tuple(ct_files), lesions, spacing_xyz)


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
    return save_rtstruct(path, study.pet_files[0], rois)
