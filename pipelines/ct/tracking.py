"""Follow-up against baseline: registration of T1 to T0, lesion matching with persistent tracking UIDs,
RECIST 1.1 from masks and the acquired-resistance pattern of the delta-radiomics method.

Registration (SimpleITK, on the CTs shrunk to about 3 mm voxels; none when they already correlate 0.995 as
acquired, e.g. the same position or the same images): rigid (Euler 3D, Mattes mutual information, three
resolution levels, 60,000 metric samples at the finest), then a
B-spline refinement when `deformable` is "always", or "auto" and the rigidly aligned CTs correlate below
`deformable_below_correlation` inside the body. The transform maps T0 points into T1 space; baseline
centroids are mapped and matched one-to-one to follow-up centroids (Hungarian assignment) within
`match_distance_mm`. A matched lesion keeps the baseline's tracking UID; an unmatched follow-up lesion is new.

RECIST 1.1 at each assessment (T1, T2, ... against the baseline T0): target lesions are the measurable
baseline lesions (long axis >= 10 mm; nodes short axis >= 15 mm), at most five, largest first; the limit of
two per organ is not applied (no organ labels). The nadir is the smallest sum so far, the baseline's and the
earlier assessments' included. Categories: CR (every target gone and nodes < 10 mm, no new lesion), PD (sum
+20 % and +5 mm over the nadir, or any new lesion), PR (sum -30 % against the baseline), else SD.
Non-target progression is not assessed. A matched lesion is progressive when its RECIST diameter grew by
`progression_percent` and `progression_min_mm` since its own nadir: its smallest diameter at the baseline and
the earlier assessments (a lesion absent at an earlier assessment had disappeared, nadir 0: it is progressive
when it has grown back by `progression_min_mm`). After a response, regrowing lesions count.

Acquired resistance, as the method defines it: a progression (PD) after an initial response (CR or PR at an
earlier assessment) or after stable disease lasting `stable_disease_min_weeks` (26: six months); its pattern
is counted at that progression: new + progressive lesions <= `oligo_max_lesions` (3) is oligo-progression,
more is systemic. A progression without either is primary resistance, and has no pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy.optimize import linear_sum_assignment

from common.types import BaselineLesion, PriorAssessment
from pipelines.ct.settings import CtRadiomicsSettings, RegistrationSettings
from pipelines.ct.types import CtLesion, LesionChange, RecistAssessment, Resistance
from pipelines.imaging.recist import meets_target_size

logger = logging.getLogger(__name__)

MAX_TARGETS = 5
NODE_NORMAL_SHORT_AXIS_MM = 10.0
FIT_SMOOTHING_MM = 4.0  # Gaussian sigma before the fit measure
SEED = 20261123  # metric sampling is random; fixed for reproducible results
REGISTRATION_VOXEL_MM = 3.0  # registration runs on the CTs shrunk to voxels of about this size
METRIC_SAMPLES = 60_000  # metric samples at the finest level
ALREADY_ALIGNED = 0.995  # correlation as acquired at or above which no registration is needed


@dataclass(frozen=True)
class Registration:
    transform: sitk.Transform  # maps T0 (fixed) points into T1 (moving) space
    description: str
    correlation: float  # of T0 and the aligned T1 within the body

    def t0_to_t1(self, point_mm: Sequence[float]) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.transform.TransformPoint(tuple(float(p) for p in point_mm)))  # type: ignore[return-value]


def _prepared(image: sitk.Image, voxel_mm: float = REGISTRATION_VOXEL_MM) -> sitk.Image:
    """Clamped to the CT range and shrunk to voxels of about `voxel_mm`: lesions are matched within 20 mm,
    so registration at full resolution (35 million voxels for a 512 x 512 x 136 CT) buys nothing."""
    factors = [max(1, int(voxel_mm // s)) for s in image.GetSpacing()]
    shrunk = sitk.Shrink(image, factors) if any(f > 1 for f in factors) else image
    return sitk.Clamp(sitk.Cast(shrunk, sitk.sitkFloat32), sitk.sitkFloat32, -1000.0, 1500.0)


def _correlation(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Fit measure: correlation of the smoothed images (noise would hide anatomy) over the field of view."""
    aligned = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0)
    a = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(fixed, FIT_SMOOTHING_MM))
    b = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(aligned, FIT_SMOOTHING_MM))
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _method(fixed: sitk.Image, metric_bins: int = 50) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=metric_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    voxels = float(np.prod(fixed.GetSize()))
    method.SetMetricSamplingPercentage(min(0.2, METRIC_SAMPLES / voxels), SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def register(t0: sitk.Image, t1: sitk.Image, settings: RegistrationSettings) -> Registration:
    fixed, moving = _prepared(t0), _prepared(t1)
    identity = sitk.Euler3DTransform()
    aligned = _correlation(fixed, moving, identity)
    if aligned >= ALREADY_ALIGNED:
        # The same patient position (or the same images): optimising would only add noise and minutes.
        description = f"none needed: the CTs already correlate {aligned:.4f} as acquired (identity)"
        logger.info("registration T1 to T0: %s", description)
        return Registration(identity, description, aligned)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = _method(fixed)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    rigid = method.Execute(fixed, moving)
    correlation = _correlation(fixed, moving, rigid)
    parameters = rigid.GetParameters() if hasattr(rigid, "GetParameters") else ()
    description = f"rigid (correlation {correlation:.3f})"
    deformable = settings.deformable == "always" or (
        settings.deformable == "auto" and correlation < settings.deformable_below_correlation
    )
    transform: sitk.Transform = rigid
    if deformable:
        bspline = sitk.BSplineTransformInitializer(fixed, [4, 4, 4])
        method = _method(fixed)
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50)
        method.SetMovingInitialTransform(rigid)
        method.SetInitialTransform(bspline, inPlace=True)
        method.Execute(fixed, moving)
        composite = sitk.CompositeTransform([rigid, bspline])
        refined = _correlation(fixed, moving, composite)
        if refined > correlation:
            transform, description = composite, f"{description}, then B-spline (correlation {refined:.3f})"
            correlation = refined
        else:
            description += ", B-spline did not improve the fit and was dropped"
    logger.info("registration T1 to T0: %s; rigid parameters %s", description, np.round(parameters, 3).tolist())
    return Registration(transform, description, correlation)


def lesion_nadir(lesion: BaselineLesion, prior: Sequence[PriorAssessment]) -> float:
    """The lesion's smallest RECIST diameter so far: at the baseline and at each earlier assessment that stored its
    lesions (absent there: disappeared, 0)."""
    earlier = [a.lesion_diameters_mm.get(lesion.tracking_uid, 0.0) for a in prior if a.lesion_diameters_mm is not None]
    return min([lesion.recist_diameter_mm, *earlier])


def progressive_growth(nadir: float, now: float, settings: CtRadiomicsSettings) -> bool:
    """Grown by `progression_min_mm` and `progression_percent` since the nadir (from 0: by the millimetres)."""
    grown = now - nadir
    return grown >= settings.progression_min_mm and (
        nadir == 0 or grown / nadir * 100.0 >= settings.progression_percent
    )


def match_lesions(
    baseline: Sequence[BaselineLesion],
    followup: Sequence[CtLesion],
    registration: Registration,
    settings: CtRadiomicsSettings,
    prior: Sequence[PriorAssessment] = (),
) -> tuple[list[CtLesion], tuple[LesionChange, ...]]:
    """Follow-up lesions carrying the matched baseline identity (new ones keep their own) and the changes, each
    matched lesion judged progressive by its growth since its nadir (`prior`: the earlier assessments)."""
    mapped = np.array([registration.t0_to_t1(b.centroid_mm) for b in baseline]).reshape(-1, 3)
    current = np.array([f.centroid_mm for f in followup], dtype=float).reshape(-1, 3)
    distances = np.linalg.norm(mapped[:, None, :] - current[None, :, :], axis=-1)
    pairs: dict[int, tuple[int, float]] = {}  # follow-up index → (baseline index, distance)
    if distances.size:
        rows, columns = linear_sum_assignment(distances)
        for r, c in zip(rows, columns):
            if distances[r, c] <= settings.registration.match_distance_mm:
                pairs[int(c)] = (int(r), float(distances[r, c]))
    tracked: list[CtLesion] = []
    changes: list[LesionChange] = []
    for index, lesion in enumerate(followup):
        if index in pairs:
            b_index, distance = pairs[index]
            before = baseline[b_index]
            lesion = replace(lesion, tracking_uid=before.tracking_uid, tracking_identifier=before.tracking_identifier)
            nadir = lesion_nadir(before, prior)
            progressive = progressive_growth(nadir, lesion.recist_diameter_mm, settings)
            changes.append(
                LesionChange(
                    before.tracking_uid,
                    before.tracking_identifier,
                    "matched",
                    before.recist_diameter_mm,
                    lesion.recist_diameter_mm,
                    before.volume_ml,
                    lesion.volume_ml,
                    distance,
                    progressive,
                    nadir,
                )
            )
        else:
            lesion = replace(lesion, tracking_identifier=f"New CT lesion {lesion.number}")
            changes.append(
                LesionChange(
                    lesion.tracking_uid,
                    lesion.tracking_identifier,
                    "new",
                    None,
                    lesion.recist_diameter_mm,
                    None,
                    lesion.volume_ml,
                    None,
                )
            )
        tracked.append(lesion)
    matched_baseline = {b for b, _ in pairs.values()}
    for index, before in enumerate(baseline):
        if index not in matched_baseline:
            changes.append(
                LesionChange(
                    before.tracking_uid,
                    before.tracking_identifier,
                    "disappeared",
                    before.recist_diameter_mm,
                    0.0,
                    before.volume_ml,
                    0.0,
                    None,
                )
            )
    return tracked, tuple(changes)


def measurable(lesion: BaselineLesion) -> bool:
    return meets_target_size(lesion.long_axis_mm, lesion.short_axis_mm, lesion.lymph_node)


RESPONSE_ORDER = ("CR", "PR", "SD", "PD")


def assess(
    baseline: Sequence[BaselineLesion],
    changes: Sequence[LesionChange],
    settings: CtRadiomicsSettings,
    prior: Sequence[PriorAssessment] = (),
    weeks: float | None = None,
) -> RecistAssessment:
    """RECIST 1.1 at this assessment (the one after the `prior` ones), and its meaning for acquired resistance."""
    targets = sorted((b for b in baseline if measurable(b)), key=lambda b: -b.recist_diameter_mm)[:MAX_TARGETS]
    by_uid = {c.tracking_uid: c for c in changes if c.status != "new"}
    sum_t0 = sum(b.recist_diameter_mm for b in targets)
    sum_t1 = sum(by_uid[b.tracking_uid].diameter_t1_mm or 0.0 for b in targets)
    nadir = min([sum_t0, *(a.sum_mm for a in prior if a.sum_mm is not None)])
    new = sum(1 for c in changes if c.status == "new")
    progressive = sum(1 for c in changes if c.progressive)
    percent = (sum_t1 - sum_t0) / sum_t0 * 100.0 if sum_t0 > 0 else None
    gone = all(
        (by_uid[b.tracking_uid].diameter_t1_mm or 0.0) < (NODE_NORMAL_SHORT_AXIS_MM if b.lymph_node else 1e-9)
        for b in targets
    )
    grown = sum_t1 - nadir
    if new or (nadir > 0 and grown >= 0.2 * nadir and grown >= 5.0):
        category = "PD"
    elif targets and gone:
        category = "CR"
    elif percent is not None and percent <= -30.0:
        category = "PR"
    else:
        category = "SD"
    earlier = [a.category for a in prior if a.category in RESPONSE_ORDER]
    best = min([*earlier, category], key=RESPONSE_ORDER.index)
    resistance, pattern = Resistance.NONE, ""
    if category == "PD":
        responded = any(c in ("CR", "PR") for c in earlier)
        controlled = "SD" in earlier and weeks is not None and weeks >= settings.stable_disease_min_weeks
        resistance = Resistance.ACQUIRED if responded or controlled else Resistance.PRIMARY
        if resistance is Resistance.ACQUIRED:
            pattern = "oligo" if new + progressive <= settings.oligo_max_lesions else "systemic"
    return RecistAssessment(
        tuple(b.tracking_uid for b in targets),
        sum_t0,
        sum_t1,
        percent,
        category,
        new,
        progressive,
        pattern,
        assessment=len(prior) + 1,
        weeks=weeks,
        nadir_mm=nadir,
        best_response=best,
        resistance=resistance,
    )
