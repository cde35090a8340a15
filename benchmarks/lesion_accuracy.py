"""Lesion detection against expert annotations, per patient: lesion-level sensitivity, false positives and
the Dice coefficient of every found lesion with its expert lesion.

Cases: the real cropped PET/CT of sts_002 and sts_003 (TCIA Soft-tissue-Sarcoma, IBSI/MIRP, CC BY 3.0) with
their experts' PET contours; a synthetic head-and-neck PET/CT (tests.synthetic: brain cut by the field of
view, tonsil, salivary glands, vocal cords, tongue base and brown fat, seven lesions touching them) with and
without its CT; a synthetic whole-body PET/CT with physiological uptake and lesions beside the brain, the
bladder and the heart.

A lesion is found when a detected lesion overlaps it with a Dice coefficient of at least 0.2; a detected
lesion that overlaps no expert lesion is a false positive.

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
from pipelines.pet.types import PetQuantResult, PetVolume  # noqa: E402
from tests.synthetic import (  # noqa: E402
    HEAD_NECK_LESIONS,
    HEAD_NECK_SHAPE,
    HEAD_NECK_SPACING,
    WHOLE_BODY_NEIGHBOUR_LESIONS,
    SyntheticLesion,
    write_study,
)

FOUND_DICE = 0.2


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

    @property
    def sensitivity(self) -> float:
        return self.found / self.expert_lesions if self.expert_lesions else 1.0

    @property
    def mean_dice(self) -> float:
        return float(np.mean(self.dice)) if self.dice else 0.0


def score(case: str, result: PetQuantResult, experts: list[np.ndarray], seconds: float) -> PatientScore:
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
    return PatientScore(
        case, len(experts), len(dice), false_positives, tuple(dice), len(detected), seconds, result.detection_notes
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
    return score(name, result, [region.mask for region in expert.regions], seconds)


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
    lines = [
        "| case | expert lesions | found | sensitivity | false positives | Dice of found lesions (mean) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.case} | {s.expert_lesions} | {s.found} | {100 * s.sensitivity:.0f} % | {s.false_positives} | "
            f"{s.mean_dice:.2f} | {s.seconds:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scores = run(Path(tmp))
    text = table(scores)
    print(text)
    for s in scores:
        for note in s.excluded:
            print(f"  {s.case}: {note}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
