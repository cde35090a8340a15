"""Lesion detection against expert annotations, per patient: lesion-level sensitivity, false positives and
the Dice coefficient of every found lesion with its expert lesion.

Cases: the real cropped PET/CT of sts_002 and sts_003 (TCIA Soft-tissue-Sarcoma, IBSI/MIRP, CC BY 3.0) with
their experts' PET contours; a synthetic head-and-neck PET/CT (tests.synthetic: brain cut by the field of
view, tonsil, salivary glands, vocal cords, tongue base and brown fat, seven lesions touching them) with and
without its CT; a synthetic whole-body PET/CT with physiological uptake and lesions beside the brain, the
bladder and the heart.

A lesion is found when a detected lesion overlaps it with a Dice coefficient of at least 0.2; a detected
lesion that overlaps no expert lesion is a false positive. Automatic findings are candidates: each case also gives
the sensitivity among the candidates a reader is offered when at most `FALSE_CANDIDATES` (5, the issue's target)
false candidates may come with them, the candidates ranked by their score (pipelines/petlesions/candidates.py) and, side
by side in the same run, by SUVmax (the ranking before the score).
Semi-automatic mode (the reader's PET contour sent along, sts_002/sts_003): Dice of the lesion with the expert's.

    python benchmarks/lesion_accuracy.py [--out lesion-accuracy.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from pipelines.imaging.contours import annotated_regions  # noqa: E402
from pipelines.imaging.geometry import patient_to_index  # noqa: E402
from pipelines.imaging.settings import AnnotationSettings  # noqa: E402
from pipelines.pet.analysis import analyse_pet_series  # noqa: E402
from pipelines.pet.settings import PetQuantSettings  # noqa: E402
from pipelines.pet.types import PetQuantResult  # noqa: E402
from pipelines.petlesions.types import PetVolume  # noqa: E402
from tests.synthetic import (  # noqa: E402
    HEAD_NECK_LESIONS,
    HEAD_NECK_SHAPE,
    HEAD_NECK_SPACING,
    WHOLE_BODY_NEIGHBOUR_LESIONS,
    SyntheticLesion,
    write_study,
)

FOUND_DICE = 0.2
FALSE_CANDIDATES = 5


@dataclass(frozen=True)
class PatientScore:
    case: str
    expert_lesions: int
    found: int
    false_positives: int
    dice: tuple[float, ...]  # of each found lesion
    detected: int
    seconds: float
    excluded: tuple[str, ...]
    found_by_score: int = 0  # experts found among candidates ranked by score, up to FALSE_CANDIDATES false ones
    found_by_suv: int = 0  # the same, ranked by SUVmax
    real: bool = False

    @property
    def sensitivity(self) -> float:
        return self.found / self.expert_lesions if self.expert_lesions else 1.0

    @property
    def mean_dice(self) -> float:
        return float(np.mean(self.dice)) if self.dice else 0.0


def _found_within(ranked: list[np.ndarray], experts: list[np.ndarray], union: np.ndarray) -> int:
    """Expert lesions found among the candidates taken in rank order until a sixth false candidate would come."""
    taken, false = [], 0
    for mask in ranked:
        if not (mask & union).any():
            false += 1
            if false > FALSE_CANDIDATES:
                break
        taken.append(mask)
    return sum(1 for expert in experts if any(_dice(mask, expert) >= FOUND_DICE for mask in taken))


def _dice(first: np.ndarray, second: np.ndarray) -> float:
    overlap = int((first & second).sum())
    return 2 * overlap / (int(first.sum()) + int(second.sum())) if overlap else 0.0


def score(
    case: str, result: PetQuantResult, experts: list[np.ndarray], seconds: float, real: bool = False
) -> PatientScore:
    shape = result.volume.suv.shape
    detected = []
    for lesion in result.lesions:
        mask = np.zeros(shape, dtype=bool)
        mask[lesion.box()] = lesion.mask
        detected.append(mask)
    dice, used = [], set()
    for expert in experts:
        best, best_index = 0.0, None
        for index, mask in enumerate(detected):
            overlap = int((mask & expert).sum())
            if overlap:
                value = 2 * overlap / (int(mask.sum()) + int(expert.sum()))
                if value > best:
                    best, best_index = value, index
        if best >= FOUND_DICE:
            dice.append(best)
            used.add(best_index)
    union = np.zeros(shape, dtype=bool)
    for expert in experts:
        union |= expert
    false_positives = sum(1 for mask in detected if not (mask & union).any())
    order = range(len(detected))
    by_score = sorted(order, key=lambda i: -(result.lesions[i].candidate_score or 0.0))
    by_suv = sorted(order, key=lambda i: -result.lesions[i].measurements.suv_max)
    return PatientScore(
        case,
        len(experts),
        len(dice),
        false_positives,
        tuple(dice),
        len(detected),
        seconds,
        result.detection_notes,
        _found_within([detected[i] for i in by_score], experts, union),
        _found_within([detected[i] for i in by_suv], experts, union),
        real,
    )


def sphere_masks(volume: PetVolume, lesions: tuple[SyntheticLesion, ...]) -> list[np.ndarray]:
    indices = np.indices(volume.suv.shape).reshape(3, -1).T
    spacing = np.asarray(volume.geometry.spacing_mm[::-1])
    masks = []
    for lesion in lesions:
        centre = patient_to_index(volume.geometry, np.asarray(lesion.centre_mm))
        distance = np.linalg.norm((indices - centre) * spacing, axis=1).reshape(volume.suv.shape)
        masks.append(distance <= lesion.radius_mm)
    return masks


def real_case(name: str, params: PetQuantSettings) -> PatientScore:
    folder = SHARED / name
    pet = sorted((folder / "PET").glob("0*.dcm"))
    ct = sorted((folder / "CT").glob("0*.dcm"))
    started = time.perf_counter()
    result = analyse_pet_series(pet, params, ct_paths=ct)
    seconds = time.perf_counter() - started
    volume = result.volume
    expert = annotated_regions(
        [folder / "PET" / "RTSTRUCT_RS.dcm"], volume.geometry, volume.frame_of_reference_uid, AnnotationSettings()
    )
    return score(name, result, [region.mask for region in expert.regions], seconds, real=True)


def reader_dice(name: str, params: PetQuantSettings) -> float:
    """Semi-automatic mode on a real study: the expert's PET and CT contours sent along (one tumour, merged); the
    Dice of the lesion with the expert's PET contour."""
    folder = SHARED / name
    pet = sorted((folder / "PET").glob("0*.dcm"))
    contours = [folder / "PET" / "RTSTRUCT_RS.dcm", folder / "CT" / "RTSTRUCT_RS.dcm"]
    result = analyse_pet_series(pet, params, contours, ct_paths=sorted((folder / "CT").glob("0*.dcm")))
    (lesion,) = result.lesions
    volume = result.volume
    (expert,) = annotated_regions(
        contours[:1], volume.geometry, volume.frame_of_reference_uid, AnnotationSettings()
    ).regions
    mask = np.zeros(volume.suv.shape, dtype=bool)
    mask[lesion.box()] = lesion.mask
    return _dice(mask, expert.mask)


def phantom_case(name: str, folder: Path, params: PetQuantSettings, with_ct: bool) -> PatientScore:
    if name.startswith("head-and-neck"):
        lesions = HEAD_NECK_LESIONS
        study = write_study(
            folder, shape_zyx=HEAD_NECK_SHAPE, spacing_xyz=HEAD_NECK_SPACING, lesions=lesions, head_and_neck=True
        )
    else:
        lesions = WHOLE_BODY_NEIGHBOUR_LESIONS
        study = write_study(folder, shape_zyx=(110, 96, 96), lesions=lesions, physiological=True)
    started = time.perf_counter()
    result = analyse_pet_series(study.pet_files, params, ct_paths=study.ct_files if with_ct else ())
    seconds = time.perf_counter() - started
    return score(name, result, sphere_masks(result.volume, lesions), seconds)


def run(folder: Path, params: PetQuantSettings | None = None) -> list[PatientScore]:
    params = params or PetQuantSettings()
    scores = [real_case("sts_002", params), real_case("sts_003", params)]
    scores.append(phantom_case("head-and-neck phantom, PET/CT", folder / "hn", params, True))
    scores.append(phantom_case("head-and-neck phantom, PET only", folder / "hn", params, False))
    scores.append(phantom_case("whole-body phantom, PET/CT", folder / "wb", params, True))
    return scores


def table(scores: list[PatientScore]) -> str:
    """Real studies first, phantoms apart; each with the candidates (all, and at most five false ones by rank)."""
    header = [
        "| case | expert lesions | candidates | found | sensitivity | false candidates | Dice of found (mean) | "
        f"found with <= {FALSE_CANDIDATES} false, by score | ... by SUVmax | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = []
    groups = (("Real studies", [s for s in scores if s.real]), ("Phantoms", [s for s in scores if not s.real]))
    for title, group in groups:
        if not group:
            continue
        lines += [f"**{title}**", "", *header]
        for s in group:
            lines.append(
                f"| {s.case} | {s.expert_lesions} | {s.detected} | {s.found} | {100 * s.sensitivity:.0f} % | "
                f"{s.false_positives} | {s.mean_dice:.2f} | {s.found_by_score}/{s.expert_lesions} | "
                f"{s.found_by_suv}/{s.expert_lesions} | {s.seconds:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scores = run(Path(tmp))
    text = table(scores)
    params = PetQuantSettings()
    text += "\n**Semi-automatic mode, real studies** (the expert's PET and CT contours sent along): " + ", ".join(
        f"{name} Dice {reader_dice(name, params):.2f}" for name in ("sts_002", "sts_003")
    )
    print(text)
    for s in scores:
        for note in s.excluded:
            print(f"  {s.case}: {note}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
