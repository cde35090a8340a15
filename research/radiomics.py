"""Research tooling of the delta-radiomics method (`immunode analyse-radiomics`, `immunode train ar-signature`):
Δ feature tables from the store or a CSV, the method's preprocessing and statistics, and the classifier.

Labels, as the method defines them: a patient has acquired resistance (AR) when the disease progresses after an
initial response (CR/PR) or after stable disease of at least six months; oligo (<= 3 progressing or new
lesions) vs systemic (> 3) is counted at that progression. The node derives both from its assessments of the
patient (T1, T2, ... against the baseline T0, up to progression; `patient_courses`), or from imported clinical
outcomes (best response, PFS) with the lesion counts of the CT assessment at the progression date; the Δ
features stay T1 against T0. Patients without AR (primary resistance, no progression yet) are neither group.

Statistics: the Spearman redundancy filter (|rho| >= 0.99 keeps the first) within each of the method's eight
datasets, resistance group (oligo, systemic) x time point (T0, T1) x volume (P, M), on the feature values at T0 and
T1; a feature goes on when it survives in every dataset of its volume (`merge="all"`, our choice where the paper
leaves the merge open; "any": in at least one); then per feature of its Δ the Mann-Whitney U test and the
median-difference permutation test (a feature counts when both are significant), and the ROC AUC with the
positive class fixed as systemic, its bootstrap 95 % CI and p. A table without T0/T1 values can only be
filtered on its Δ values (per volume and filter bank): the report says it is not the paper's datasets.

Table CSV: PatientID, IssuerOfPatientID (optional), pattern ("oligo" or "systemic"), then one column per Δ
feature named as in the SR ("P_original_glcm_ClusterTendency", "M_..."), and optionally the values at T0 and T1
of each ("T0_P_original_glcm_ClusterTendency", "T1_..."). Empty cells are undefined.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from common.types import ClinicalVariables
from research import published
from research.errors import DeltaTableError
from storage.types import StoredAssessment

if TYPE_CHECKING:
    from models.ar_signature import ArSignature

PATTERNS = ("oligo", "systemic")
ID_COLUMNS = ("PatientID", "IssuerOfPatientID", "pattern")
TIME_POINTS = ("T0", "T1")
VOLUMES = ("P", "M")
REDUNDANCY_RHO = published.figure("mazzaschi2025", "redundancy_rho").value


@dataclass(frozen=True, eq=False)
class DeltaTable:
    patients: tuple[tuple[str, str], ...]
    systemic: np.ndarray  # bool per patient
    features: tuple[str, ...]
    values: np.ndarray  # [patient, feature] Δ, NaN where undefined
    # The feature values at T0 and T1 ([patient, feature], NaN where missing), which the method's redundancy
    # filter runs on; None when the table holds only Δ.
    t0: np.ndarray | None = None
    t1: np.ndarray | None = None


def _float(text: str, where: str) -> float:
    if text.strip() == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DeltaTableError(f"{where}: {text!r} is not a number") from None


def _pattern(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value not in PATTERNS:
        raise DeltaTableError(f"{where}: pattern must be oligo or systemic, got {text!r}")
    return value == "systemic"


def read_labels(path: Path) -> dict[tuple[str, str], bool]:
    """PatientID, IssuerOfPatientID, pattern → systemic?"""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = {}
    for number, row in enumerate(rows, start=2):
        if "PatientID" not in row or "pattern" not in row:
            raise DeltaTableError(f"{path}: needs columns PatientID and pattern")
        key = (row["PatientID"].strip(), (row.get("IssuerOfPatientID") or "").strip())
        labels[key] = _pattern(row["pattern"], f"{path.name}: row {number}, column 'pattern'")
    return labels


def read_table(path: Path) -> DeltaTable:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [n for n in (reader.fieldnames or []) if n not in ID_COLUMNS]
        names = [n for n in columns if not n.startswith(tuple(f"{t}_" for t in TIME_POINTS))]
        if "PatientID" not in (reader.fieldnames or []) or "pattern" not in (reader.fieldnames or []):
            raise DeltaTableError(f"{path}: needs columns PatientID, pattern and Δ features")
        raw = {t: [f"{t}_{n}" for n in names] for t in TIME_POINTS}
        given = {t: all(c in columns for c in raw[t]) and bool(names) for t in TIME_POINTS}
        stray = [c for c in columns if c not in names and not any(c in raw[t] for t in TIME_POINTS)]
        if stray or given["T0"] != given["T1"]:
            which = ", ".join(stray[:3]) or "T0 or T1 missing"
            raise DeltaTableError(f"{path}: T0_/T1_ columns must give both time points of every Δ feature ({which})")
        patients, systemic, values, t0, t1 = [], [], [], [], []
        for number, row in enumerate(reader, start=2):
            patients.append((row["PatientID"].strip(), (row.get("IssuerOfPatientID") or "").strip()))
            systemic.append(_pattern(row["pattern"], f"{path.name}: row {number}, column 'pattern'"))

            def cells(heads: Sequence[str]) -> list[float]:
                return [_float(row[n] or "", f"{path.name}: row {number}, column {n!r}") for n in heads]

            values.append(cells(names))
            if given["T0"]:
                t0.append(cells(raw["T0"]))
                t1.append(cells(raw["T1"]))
    shape = (len(patients), len(names))
    return DeltaTable(
        tuple(patients),
        np.array(systemic, dtype=bool),
        tuple(names),
        np.array(values, dtype=float).reshape(shape),
        np.array(t0, dtype=float).reshape(shape) if given["T0"] else None,
        np.array(t1, dtype=float).reshape(shape) if given["T0"] else None,
    )


@dataclass(frozen=True)
class PatientCourse:
    """A patient's course after the baseline: the T1 Δ features, the best response and, at a progression, whether it
    is acquired resistance with its pattern; `source` says where the outcome came from."""

    patient: tuple[str, str]
    baseline_study_uid: str
    deltas: Mapping[str, float | None] = field(default_factory=dict)
    best_response: str = ""
    resistance: str = "none"  # none (no progression yet) / primary / acquired
    pattern: str = ""  # acquired resistance: oligo / systemic
    source: str = ""
    # The feature values at T0 and T1, named as the Δ ("P_original_..."), for the method's redundancy filter.
    t0: Mapping[str, float] = field(default_factory=dict)
    t1: Mapping[str, float] = field(default_factory=dict)


def _flat(features: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{volume}_{name}": value for volume, values in features.items() for name, value in values.items()}


PROGRESSION_MATCH_DAYS = 56  # a CT within 8 weeks of an imported progression date supplies its lesion counts


def _from_clinical(
    course: PatientCourse, clinical: ClinicalVariables | None, assessments: Sequence[StoredAssessment], oligo_max: int
) -> PatientCourse:
    """Acquired resistance from imported outcomes: progression (pfs_event) after CR/PR, or after SD with a PFS of six
    months or more; the pattern from the CT assessment nearest the progression date, within 8 weeks."""
    if clinical is None or not clinical.pfs_event or clinical.pfs_months is None or not clinical.best_response:
        return course
    response = clinical.best_response
    if not (response in ("CR", "PR") or (response == "SD" and clinical.pfs_months >= 6.0)):
        return replace(course, best_response=response, resistance="primary", pattern="", source="clinical")
    pattern = ""
    if clinical.therapy_start is not None:
        progressed = clinical.therapy_start + timedelta(days=clinical.pfs_months * 30.44)
        near = [
            a
            for a in assessments
            if a.study_date is not None and abs((a.study_date - progressed).days) <= PROGRESSION_MATCH_DAYS
        ]
        if near:
            nearest = min(near, key=lambda a: abs((a.study_date - progressed).days))
            count = (nearest.new_lesions or 0) + (nearest.progressive_lesions or 0)
            pattern = "oligo" if count <= oligo_max else "systemic"
    source = "imported clinical outcome" + ("" if pattern else " (no CT near the progression: no pattern)")
    return replace(course, best_response=response, resistance="acquired", pattern=pattern, source=source)


def patient_courses(
    assessments: Sequence[StoredAssessment], clinical: Mapping[tuple[str, str], ClinicalVariables], oligo_max: int = 3
) -> list[PatientCourse]:
    """Each patient's course over the assessments of its latest baseline (the node's own, else imported outcomes)."""
    by_patient: dict[tuple[str, str], list[StoredAssessment]] = {}
    for a in assessments:
        by_patient.setdefault((a.patient_id, a.issuer_of_patient_id), []).append(a)
    courses = []
    for key, found in by_patient.items():
        baseline = found[-1].baseline_study_uid
        series = [a for a in found if a.baseline_study_uid == baseline]
        first = next((a for a in series if a.assessment == 1), series[0])
        course = PatientCourse(
            key,
            baseline,
            dict(first.deltas or {}),
            source="CT assessments",
            t0=_flat(first.features_t0),
            t1=_flat(first.features_t1),
        )
        for a in series:
            best = a.best_response or a.category
            course = replace(course, best_response=best, resistance="none", pattern="")
            if a.resistance in ("acquired", "primary"):
                course = replace(course, resistance=a.resistance, pattern=a.pattern)
                break
        if course.resistance == "none":
            course = _from_clinical(course, clinical.get(key), series, oligo_max)
        courses.append(course)
    return courses


def table_from_store(
    courses: Sequence[PatientCourse], labels: dict[tuple[str, str], bool] | None
) -> tuple[DeltaTable, list[str]]:
    """The T1 Δ of patients with acquired resistance and a pattern (or, with `labels`, of the labelled patients
    only), and why the others are left out."""
    patients, systemic, dicts, left_out, included = [], [], [], [], []
    for course in courses:
        key = course.patient
        if not course.deltas:
            left_out.append(f"{key[0]}: no T1 delta features")
            continue
        if labels is not None:
            if key not in labels:
                continue
            label = labels[key]
        elif course.resistance == "acquired" and course.pattern in PATTERNS:
            label = course.pattern == "systemic"
        else:
            why = {
                "none": "no progression (yet): neither group",
                "primary": "progression without response or lasting stable disease: primary, not acquired resistance",
            }.get(course.resistance, "acquired resistance without a lesion count at progression")
            left_out.append(f"{key[0]}: {why}")
            continue
        patients.append(key)
        systemic.append(label)
        dicts.append(course.deltas)
        included.append(course)
    names = sorted(set().union(*dicts)) if dicts else []

    def matrix(rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        found = [[np.nan if d.get(n) is None else d[n] for n in names] for d in rows]
        return np.array(found, dtype=float).reshape(len(rows), len(names))

    # The T0/T1 values when every patient's are stored (results of older versions have none: Δ only).
    raw = bool(included) and all(c.t0 and c.t1 for c in included)
    table = DeltaTable(
        tuple(patients),
        np.array(systemic, dtype=bool),
        tuple(names),
        matrix(dicts),
        matrix([c.t0 for c in included]) if raw else None,
        matrix([c.t1 for c in included]) if raw else None,
    )
    return table, left_out


@dataclass(frozen=True)
class FeatureTest:
    feature: str
    n_oligo: int
    n_systemic: int
    median_oligo: float
    median_systemic: float
    mann_whitney_p: float
    permutation_p: float
    auc: float  # systemic is the positive class
    auc_ci_low: float  # bootstrap 95 % CI
    auc_ci_high: float
    auc_p: float  # of AUC = 0.5 (equal to the Mann-Whitney p)
    significant: bool  # both tests below alpha, as the method counts a feature


POSITIVE_CLASS = "systemic"


Merge = Literal["all", "any"]


def volume_of(name: str) -> str:
    return name.partition("_")[0]


def paper_datasets(table: DeltaTable) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The method's eight datasets, "<group> <time point> <volume>" → (the feature values of that group's patients
    at that time point, the table's columns of that volume)."""
    if table.t0 is None or table.t1 is None:
        raise DeltaTableError("the table holds no T0/T1 values: the method's datasets cannot be formed")
    datasets = {}
    for group, members in (("oligo", ~table.systemic), ("systemic", table.systemic)):
        for time_point, values in zip(TIME_POINTS, (table.t0, table.t1)):
            for volume in VOLUMES:
                columns = [j for j, name in enumerate(table.features) if volume_of(name) == volume]
                if columns:
                    datasets[f"{group} {time_point} {volume}"] = (values[members][:, columns], columns)
    return datasets


def filtered_features(table: DeltaTable, threshold: float = REDUNDANCY_RHO, merge: Merge = "all") -> list[str]:
    """The redundancy filter within each of the method's datasets (on the T0/T1 values), merged per volume: a
    feature is kept when it survives in every dataset of its volume ("all") or in at least one ("any"). Without
    T0/T1 values: the filter on the Δ values within each volume and filter bank, then over the merged survivors
    (not the paper's datasets; `filter_statement` says so)."""
    names = table.features
    if table.t0 is not None and table.t1 is not None:
        survived: dict[int, list[bool]] = {j: [] for j in range(len(names))}
        for values, columns in paper_datasets(table).values():
            kept = set(redundancy_filter(values, [names[c] for c in columns], threshold))
            for c in columns:
                survived[c].append(names[c] in kept)
        rule = all if merge == "all" else any
        return [names[j] for j in range(len(names)) if survived[j] and rule(survived[j])]
    banks: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        bank = "wavelet" if name.partition("_")[2].startswith("wavelet") else "original"
        banks.setdefault(f"{volume_of(name)} {bank}", []).append(index)
    survivors: list[int] = []
    for columns in banks.values():
        kept = set(redundancy_filter(table.values[:, columns], [names[c] for c in columns], threshold))
        survivors += [c for c in columns if names[c] in kept]
    survivors.sort()
    return redundancy_filter(table.values[:, survivors], [names[c] for c in survivors], threshold)


def filter_statement(table: DeltaTable, merge: Merge = "all") -> str:
    """How the redundancy filter ran on this table, in words (for the reports)."""
    if table.t0 is not None and table.t1 is not None:
        how = "in every dataset of its volume" if merge == "all" else "in at least one dataset of its volume"
        return (
            f"redundancy filter (Spearman |rho| >= {REDUNDANCY_RHO}) within the paper's eight datasets (oligo/systemic "
            f"x T0/T1 x P/M) on the T0 and T1 values; a feature kept when it survives {how} (our choice)"
        )
    return (
        f"redundancy filter (Spearman |rho| >= {REDUNDANCY_RHO}) on the Δ values per volume and filter bank: NOT the "
        "paper's datasets (the table holds no T0/T1 values; give T0_/T1_ columns)"
    )


def _auc_interval(
    labels: np.ndarray, values: np.ndarray, rng: np.random.Generator, rounds: int = 1000
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the ROC AUC (resamples with one class skipped). Each resample's AUC from its ranks
    (Mann-Whitney U over n1 x n0, ties counted half: roc_auc_score's value), all resamples at once."""
    from scipy.stats import rankdata

    picks = np.array([rng.integers(0, len(values), len(values)) for _ in range(rounds)])
    positive = np.asarray(labels, dtype=bool)[picks]
    n1 = positive.sum(axis=1)
    n0 = positive.shape[1] - n1
    both = (n1 > 0) & (n0 > 0)
    if not both.any():
        return (np.nan, np.nan)
    ranks = rankdata(values[picks[both]], axis=1)
    u = (ranks * positive[both]).sum(axis=1) - n1[both] * (n1[both] + 1) / 2.0
    found = u / (n1[both] * n0[both])
    return (float(np.percentile(found, 2.5)), float(np.percentile(found, 97.5)))


def redundancy_filter(table: np.ndarray, names: Sequence[str], threshold: float = REDUNDANCY_RHO) -> list[str]:
    """Spearman |rho| >= threshold: keep the first feature (in the given order) of each redundant set."""
    from scipy.stats import spearmanr

    if table.shape[1] < 2:
        return list(names)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant column: no coefficient, dropped below
        statistic = spearmanr(table, nan_policy="omit").statistic
    # Two columns give one coefficient, more give the matrix.
    rho = np.array([[1.0, statistic], [statistic, 1.0]]) if table.shape[1] == 2 else np.asarray(statistic)
    kept: list[int] = []
    for j in range(len(names)):
        if np.all(np.isnan(table[:, j])) or np.nanstd(table[:, j]) == 0:
            continue  # constant: carries no information
        if all(not (abs(rho[j, k]) >= threshold) for k in kept):
            kept.append(j)
    return [names[j] for j in kept]


def permutation_p(a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided permutation test of the difference in medians (the observed split counted once)."""
    observed = abs(np.median(a) - np.median(b))
    pooled = np.concatenate([a, b])
    hits = 0
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        if abs(np.median(shuffled[: len(a)]) - np.median(shuffled[len(a) :])) >= observed - 1e-12:
            hits += 1
    return (hits + 1) / (permutations + 1)


def feature_tests(
    table: np.ndarray,
    names: Sequence[str],
    systemic: np.ndarray,
    permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[FeatureTest]:
    """Mann–Whitney U, median-difference permutation test and ROC AUC (systemic positive, bootstrap 95 % CI) per
    feature, sorted by p value; significant when both tests are below `alpha`."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    results = []
    for j, name in enumerate(names):
        values = table[:, j]
        ok = ~np.isnan(values)
        a, b = values[ok & ~systemic], values[ok & systemic]
        if len(a) < 2 or len(b) < 2:
            continue
        mann_whitney = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        permuted = permutation_p(a, b, permutations, rng)
        low, high = _auc_interval(systemic[ok], values[ok], rng)
        results.append(
            FeatureTest(
                name,
                len(a),
                len(b),
                float(np.median(a)),
                float(np.median(b)),
                mann_whitney,
                permuted,
                float(roc_auc_score(systemic[ok], values[ok])),
                low,
                high,
                mann_whitney,
                mann_whitney < alpha and permuted < alpha,
            )
        )
    return sorted(results, key=lambda r: (r.mann_whitney_p, r.feature))


def analyse(
    table: DeltaTable,
    out: Path,
    permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    merge: Merge = "all",
) -> tuple[list[str], list[FeatureTest]]:
    """Redundancy filter (the method's datasets, merged per volume), then per-feature tests on Δ; writes
    feature_tests.csv and kept_features.txt (`filter_statement` says how the filter ran)."""
    if table.systemic.sum() < 2 or (~table.systemic).sum() < 2:
        raise DeltaTableError("need at least two patients of each pattern (oligo and systemic)")
    kept = filtered_features(table, merge=merge)
    columns = [table.features.index(name) for name in kept]
    results = feature_tests(table.values[:, columns], kept, table.systemic, permutations, seed, alpha)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept_features.txt").write_text("\n".join(kept) + "\n")
    with (out / "feature_tests.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(FeatureTest.__dataclass_fields__))
        writer.writeheader()
        for result in results:
            writer.writerow(asdict(result))
    return kept, results


def relabelled(table: DeltaTable, labels: dict[tuple[str, str], bool]) -> DeltaTable:
    """Only the labelled patients, with the given patterns."""
    keep = [i for i, patient in enumerate(table.patients) if patient in labels]
    return DeltaTable(
        tuple(table.patients[i] for i in keep),
        np.array([labels[table.patients[i]] for i in keep], dtype=bool),
        table.features,
        table.values[keep],
        table.t0[keep] if table.t0 is not None else None,
        table.t1[keep] if table.t1 is not None else None,
    )


def train_signature(table: DeltaTable, features: Sequence[str]) -> tuple[ArSignature, dict]:
    """Fit the classifier on patients whose Δ is defined for every named feature; training metrics."""
    from sklearn.metrics import roc_auc_score

    from models import ar_signature

    missing = [f for f in features if f not in table.features]
    if missing:
        raise DeltaTableError(f"features not in the table: {', '.join(missing)}")
    values = table.values[:, [table.features.index(f) for f in features]]
    complete = ~np.isnan(values).any(axis=1)
    signature = ar_signature.fit(values[complete], features, table.systemic[complete])
    predicted = [signature.probability_systemic(dict(zip(features, row))) for row in values[complete]]
    metrics = {
        "patients": int(complete.sum()),
        "left_out_undefined": int((~complete).sum()),
        "training_auc": float(roc_auc_score(table.systemic[complete], predicted)),
    }
    return signature, metrics
