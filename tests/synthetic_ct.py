"""Synthetic CT studies: a longitudinal chest-abdomen pair with known lesion changes for the CT method (readers'
RTSTRUCT included), and a lung planning CT shaped like a real de-identified one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage, generate_uid

from tests.synthetic_dicom import image_dataset, save_ct_slice, save_rtstruct


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
        ct = image_dataset("CT", study_uid, series_uid, frame_uid, CTImageStorage, when, patient_id, "siemens")
        ct.IssuerOfPatientID = issuer
        ct.AcquisitionNumber = 1
        position = (origin[0], origin[1], origin[2] + k * spacing_xyz[2])
        files.append(save_ct_slice(ct, folder, k, position, spacing_xyz, np.round(np.clip(hu[k] + 1024, 0, 4095))))
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
    return save_rtstruct(path, first_ct, rois)


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
        ct = image_dataset("CT", study_uid, series_uid, frame_uid, CTImageStorage, when, patient_id, "siemens")
        del ct.IssuerOfPatientID
        ct.PatientIdentityRemoved = "YES"  # and no De-identification Method: as in the research data set
        stored = np.round(np.clip(hu + 1024, 0, 4095))
        files.append(save_ct_slice(ct, folder, k, (origin[0], origin[1], z), spacing_xyz, stored))
    types = {"Lung-Left": "ORGAN", "Lung-Right": "ORGAN", "Spinal-Cord": "ORGAN"}
    rtstruct = save_rtstruct(folder / "RS.dcm", files[0], list(contours.items()), types)
    return PlanningCt(study_uid, tuple(files), rtstruct, gtv_centre, gtv_radius)
