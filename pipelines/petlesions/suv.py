"""Body-weight SUV conversion of PET slices following the QIBA vendor-neutral SUV rules.

SUVbw = C(Bq/ml) × weight(g) / decayed dose(Bq). The header edge cases handled are those of the
oncoray "Standardizing SUV Computation" reference suite: units BQML, GML, CM2ML and Philips CNTS,
decay correction START / ADMIN / NONE, series time after acquisition time, GE private scan date-time,
injection date-time variants and midnight crossing, dose recorded in MBq, any radionuclide half-life.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from pipelines.errors import SuvNotComputable
from pipelines.petlesions.types import SuvConversion, SuvType

GE_PRIVATE_SCAN_DATETIME = (0x0009, 0x100D)  # GEMS_PETD_01 "scan date-time", the decay reference
PHILIPS_SUV_SCALE_FACTOR = (0x7053, 0x1000)  # counts → SUVbw
PHILIPS_ACTIVITY_SCALE_FACTOR = (0x7053, 0x1009)  # counts → Bq/ml
# A dose below this is taken to be in MBq: a diagnostic activity is 10^7–10^9 Bq, or 1–2000 MBq.
MBQ_DOSE_CEILING = 1.0e5


def _private_value(ds: Dataset, tag: tuple[int, int]) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="ignore")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _private_float(ds: Dataset, tag: tuple[int, int]) -> float | None:
    text = _private_value(ds, tag)
    if text is None:
        return None
    try:
        return float(text.split("\\")[0])
    except ValueError:
        return None


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)


def _parse_dt(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return _naive(DT(str(text)))
    except ValueError:
        return None


def _combine(date_text: str | None, time_text: str | None) -> datetime | None:
    if not date_text or not time_text:
        return None
    try:
        return datetime.combine(DA(str(date_text)), TM(str(time_text)))
    except (ValueError, TypeError):
        return None


def acquisition_datetime(ds: Dataset) -> datetime | None:
    return _parse_dt(ds.get("AcquisitionDateTime")) or _combine(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"))


def effective_time_in_frame_s(duration_s: float, half_life_s: float) -> float:
    """Time after frame start at which the decaying activity equals its frame average."""
    if duration_s <= 0:
        return 0.0
    decay_constant = math.log(2) / half_life_s
    x = decay_constant * duration_s
    return -math.log((1 - math.exp(-x)) / x) / decay_constant


def scan_start(slices: Sequence[Dataset], half_life_s: float) -> tuple[datetime, str]:
    """The decay-correction reference of a START-corrected series and the rule that gave it."""
    first = slices[0]
    series_dt = _combine(first.get("SeriesDate"), first.get("SeriesTime"))
    acquisitions = [dt for dt in (acquisition_datetime(ds) for ds in slices) if dt is not None]
    earliest = min(acquisitions) if acquisitions else None
    if series_dt is not None and (earliest is None or series_dt <= earliest):
        return series_dt, "series date/time"
    ge_scan = _parse_dt(_private_value(first, GE_PRIVATE_SCAN_DATETIME))
    if ge_scan is not None:
        return ge_scan, "GE private scan date/time (series time after acquisition time)"
    # Series time was rewritten (post-processing): recover the start from each frame's reference time.
    starts = []
    for ds in slices:
        acquired = acquisition_datetime(ds)
        if acquired is None or "FrameReferenceTime" not in ds or "ActualFrameDuration" not in ds:
            continue
        duration_s = float(ds.ActualFrameDuration) / 1000.0
        in_frame = effective_time_in_frame_s(duration_s, half_life_s)
        starts.append(acquired + timedelta(seconds=in_frame - float(ds.FrameReferenceTime) / 1000.0))
    if starts:
        return min(starts), "acquisition time and frame reference time (series time after acquisition time)"
    if earliest is not None:
        return earliest, "earliest acquisition date/time"
    raise SuvNotComputable("no series or acquisition date/time: the decay time cannot be computed")


def _radiopharmaceutical(ds: Dataset) -> Dataset:
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise SuvNotComputable("RadiopharmaceuticalInformationSequence is missing: no dose information")
    return sequence[0]


def injection_datetime(ds: Dataset, info: Dataset, scan: datetime) -> datetime:
    injected = _parse_dt(info.get("RadiopharmaceuticalStartDateTime"))
    if injected is not None:
        return injected
    time_text = info.get("RadiopharmaceuticalStartTime")
    if not time_text:
        raise SuvNotComputable("neither RadiopharmaceuticalStartDateTime nor RadiopharmaceuticalStartTime is present")
    injected = _combine(ds.get("SeriesDate") or scan.strftime("%Y%m%d"), time_text)
    if injected is None:
        raise SuvNotComputable(f"RadiopharmaceuticalStartTime {time_text!r} cannot be read")
    # Time only and later than the scan: the injection was the evening before (midnight crossing).
    if injected > scan:
        injected -= timedelta(days=1)
    return injected


def _optional_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _sex_mean(sex: str, male: float, female: float) -> float:
    # Sex other or unknown: the mean of the male and female formulas.
    return {"M": male, "F": female}.get(sex, (male + female) / 2.0)


def body_weight_ratio(ds: Dataset, suv_type: str) -> tuple[float, str]:
    """Factor turning an SUV normalised by LBM, IBW or BSA into body-weight SUV (weight / normaliser)."""
    if suv_type in ("BW", ""):
        return 1.0, ""
    weight_kg = _positive(ds.get("PatientWeight"), "PatientWeight")
    height_m = _positive(ds.get("PatientSize"), "PatientSize")
    height_cm = height_m * 100.0
    sex = str(ds.get("PatientSex", "")).upper()
    if suv_type.startswith("LBM"):
        # James (1976) lean body mass, the formula named by SUVType LBMJAMES128.
        bmi_term = (weight_kg / height_cm) ** 2
        normaliser = _sex_mean(sex, 1.10 * weight_kg - 128 * bmi_term, 1.07 * weight_kg - 148 * bmi_term)
        return weight_kg / normaliser, f", converted to SUVbw with James lean body mass {normaliser:.2f} kg"
    if suv_type == "IBW":
        # Ideal body weight as used for SUVibw by Zasadny & Wahl (Radiology 1993).
        normaliser = _sex_mean(sex, 48.0 + 1.06 * (height_cm - 152.0), 45.5 + 0.91 * (height_cm - 152.0))
        return weight_kg / normaliser, f", converted to SUVbw with ideal body weight {normaliser:.2f} kg"
    if suv_type == "BSA":
        # Du Bois body surface area; SUVbsa is normalised by BSA in cm2, SUVbw by weight in g.
        bsa_cm2 = 0.007184 * weight_kg**0.425 * height_cm**0.725 * 1.0e4
        return (
            weight_kg * 1000.0 / bsa_cm2,
            f", converted to SUVbw with Du Bois body surface area {bsa_cm2 / 1e4:.3f} m2",
        )
    raise SuvNotComputable(f"SUVType {suv_type} cannot be converted to body-weight SUV")


def _positive(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SuvNotComputable(f"{name} is missing or not a number") from None
    if not number > 0:
        raise SuvNotComputable(f"{name} must be positive, got {number}")
    return number


def suv_factors(slices: Sequence[Dataset]) -> tuple[np.ndarray, SuvConversion]:
    """Per-slice factors turning rescaled stored values into SUV, and how they were obtained."""
    first = slices[0]
    units = str(first.get("Units", "")).upper()
    decay_correction = str(first.get("DecayCorrection", "")).upper()
    ones = np.ones(len(slices))
    if units in ("GML", "CM2ML"):
        # Stored as SUV by the scanner; SUVType says which normalisation, and we report body-weight SUV.
        suv_type = str(first.get("SUVType", "") or ("BSA" if units == "CM2ML" else "BW")).upper()
        ratio, note = body_weight_ratio(first, suv_type)
        return ones * ratio, SuvConversion(
            SuvType.BW,
            units,
            f"values stored as SUV{suv_type.lower()} by the scanner{note}",
            decay_correction,
            None,
            None,
            None,
            _optional_float(first.get("PatientWeight")),
        )
    activity_scale = ones
    method_prefix = ""
    if units == "CNTS":
        suv_scale = [_private_float(ds, PHILIPS_SUV_SCALE_FACTOR) for ds in slices]
        if all(v is not None and v > 0 for v in suv_scale):
            return np.asarray(suv_scale, dtype=float), SuvConversion(
                SuvType.BW, units, "Philips SUV scale factor (7053,1000)", decay_correction, None, None, None, None
            )
        activity = [_private_float(ds, PHILIPS_ACTIVITY_SCALE_FACTOR) for ds in slices]
        if not all(v is not None and v > 0 for v in activity):
            raise SuvNotComputable("Units CNTS without a Philips SUV or activity scale factor (7053,1000/1009)")
        activity_scale = np.asarray(activity, dtype=float)
        method_prefix = "counts × Philips activity scale factor (7053,1009), then "
    elif units != "BQML":
        raise SuvNotComputable(f"Units {units or '(missing)'} cannot be converted to SUV")

    weight_kg = _positive(first.get("PatientWeight"), "PatientWeight")
    info = _radiopharmaceutical(first)
    dose_bq = _positive(info.get("RadionuclideTotalDose"), "RadionuclideTotalDose")
    dose_note = ""
    if dose_bq < MBQ_DOSE_CEILING:
        dose_bq *= 1.0e6
        dose_note = " (dose read as MBq)"
    half_life_s = _positive(info.get("RadionuclideHalfLife"), "RadionuclideHalfLife")
    weight_g = weight_kg * 1000.0

    if decay_correction == "ADMIN":
        # Already decay-corrected to the administration time: no further decay.
        return activity_scale * weight_g / dose_bq, SuvConversion(
            SuvType.BW,
            units,
            method_prefix + "body weight / dose (decay-corrected to administration)" + dose_note,
            decay_correction,
            dose_bq,
            0.0,
            half_life_s,
            weight_kg,
        )
    scan, scan_rule = scan_start(slices, half_life_s)
    injected = injection_datetime(first, info, scan)
    if decay_correction == "START":
        decay_s = (scan - injected).total_seconds()
        if decay_s < 0:
            raise SuvNotComputable("injection time is after the scan start")
        decayed = dose_bq * 2.0 ** (-decay_s / half_life_s)
        return activity_scale * weight_g / decayed, SuvConversion(
            SuvType.BW,
            units,
            method_prefix + f"body weight / dose decayed to scan start ({scan_rule})" + dose_note,
            decay_correction,
            dose_bq,
            decay_s,
            half_life_s,
            weight_kg,
        )
    if decay_correction == "NONE":
        # Not decay-corrected: each frame represents the activity at scan start + its frame reference time.
        factors = np.empty(len(slices))
        decay_times = []
        for index, ds in enumerate(slices):
            if "FrameReferenceTime" in ds:
                reference = scan + timedelta(seconds=float(ds.FrameReferenceTime) / 1000.0)
            else:
                acquired = acquisition_datetime(ds)
                if acquired is None:
                    raise SuvNotComputable(
                        "DecayCorrection NONE without per-slice acquisition or frame reference times"
                    )
                duration_s = float(ds.get("ActualFrameDuration", 0) or 0) / 1000.0
                reference = acquired + timedelta(seconds=effective_time_in_frame_s(duration_s, half_life_s))
            decay_s = (reference - injected).total_seconds()
            decay_times.append(decay_s)
            factors[index] = weight_g / (dose_bq * 2.0 ** (-decay_s / half_life_s))
        return activity_scale * factors, SuvConversion(
            SuvType.BW,
            units,
            method_prefix + "body weight / dose decayed to each frame's reference time" + dose_note,
            decay_correction,
            dose_bq,
            float(np.median(decay_times)),
            half_life_s,
            weight_kg,
        )
    raise SuvNotComputable(f"DecayCorrection {decay_correction or '(missing)'} is not supported")
