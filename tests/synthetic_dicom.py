"""DICOM building blocks of the synthetic studies (`tests.synthetic`, `tests.synthetic_ct`): an image's patient,
study and series attributes in a vendor's style, a reader's RT Structure Set, and the RT Plan and RT Dose a planning
system leaves beside the images."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid


def image_dataset(modality, study_uid, series_uid, frame_uid, sop_class, when, patient_id, vendor):
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


def save_ct_slice(
    ct: Dataset,
    folder: Path,
    k: int,
    position_mm: tuple[float, float, float],
    spacing_xyz: tuple[float, float, float],
    stored: np.ndarray,
) -> Path:
    """Slice `k` of a CT series (a dataset from `image_dataset`) with its geometry and stored values (HU + 1024,
    int16), saved as folder/CT/ct_<k>.dcm."""
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ct.InstanceNumber = k + 1
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ct.ImagePositionPatient = list(position_mm)
    ct.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
    ct.SliceThickness = spacing_xyz[2]
    ct.Rows, ct.Columns = stored.shape
    ct.PixelRepresentation = 1
    ct.RescaleSlope, ct.RescaleIntercept, ct.RescaleType = 1, -1024, "HU"
    ct.KVP = 120
    ct.PixelData = stored.astype(np.int16).tobytes()
    path = folder / "CT" / f"ct_{k:04d}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ct.save_as(path, enforce_file_format=True)
    return path


def save_rtstruct(
    path: Path, image: Path, rois: list[tuple[str, list[np.ndarray]]], types: dict[str, str] | None = None
) -> Path:
    """A reader's RT Structure Set in the image's study and frame of reference: one ROI per (name, closed
    planar contours as N x 3 patient points); RT ROI Interpreted Type GTV unless `types` names another."""
    reference = pydicom.dcmread(image, stop_before_pixels=True)
    frame_uid = reference.FrameOfReferenceUID
    ds = image_dataset(
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


def _rt_object(image: Dataset, sop_class: str, modality: str, series_number: int) -> Dataset:
    """An RT object in a series of its own in the image's study and frame of reference, the patient's as the image's."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, image.get(keyword, ""))
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = image.StudyInstanceUID, image.FrameOfReferenceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, 1
    ds.StudyDate, ds.StudyTime = image.StudyDate, image.get("StudyTime", "")
    return ds


def write_rt_plan_and_dose(folder: Path, image: Dataset) -> tuple[Path, Path]:
    """An RT Plan (no pixel data) and a multi-frame RT Dose in the image's study and frame of reference, as a
    planning system leaves them beside the images; no pipeline uses them, a PACS forwards them anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = _rt_object(image, "1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN", 90)  # RT Plan
    plan.RTPlanLabel, plan.RTPlanGeometry = "PLAN1", "PATIENT"
    plan_path = folder / "rtplan.dcm"
    plan.save_as(plan_path, enforce_file_format=True)

    dose = _rt_object(image, "1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE", 91)  # RT Dose
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
