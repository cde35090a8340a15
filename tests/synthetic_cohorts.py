"""Synthetic cohorts with a planted (or no) response signal, for tests and demonstrations only.

Expression: log-normal TPM per gene; in a cohort with signal, responders have the IFN-gamma / cytotoxic genes
raised by `effect_log2` (log2 units). Imaging embeddings and clinical variables carry the same latent
response propensity with noise. Nothing here resembles a real patient cohort beyond these plantings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGNAL_GENES = ("GZMA", "PRF1", "CXCL9", "CXCL10", "IFNG", "IDO1", "STAT1", "CD8A", "GZMB", "NKG7", "CCL5", "LAG3")


@dataclass(frozen=True)
class SyntheticCohort:
    sample_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    genes: tuple[str, ...]
    tpm: np.ndarray  # samples × genes
    labels: np.ndarray  # 1 responder, 0 non-responder
    imaging: np.ndarray  # patients × lesions-per-patient × embedding (pooled per patient later)
    clinical: tuple[dict, ...]  # clinical variables per patient, in the import file's column names


def synthetic_cohort(
    genes: tuple[str, ...],
    patients: int = 200,
    responder_fraction: float = 0.35,
    signal: bool = True,
    effect_log2: float = 1.5,
    extra_genes: int = 40,
    embedding_dim: int = 32,
    seed: int = 0,
) -> SyntheticCohort:
    rng = np.random.default_rng(seed)
    labels = (rng.random(patients) < responder_fraction).astype(int)
    labels[:2] = [0, 1]  # both classes present, whatever the seed
    all_genes = tuple(genes) + tuple(f"SYNTH{i:03d}" for i in range(extra_genes))
    base = rng.uniform(0.0, 7.0, size=len(all_genes))
    log2_tpm = base + rng.normal(0.0, 0.8, size=(patients, len(all_genes)))
    # Latent propensity: the label plus noise, shared by all modalities when there is a signal.
    propensity = (labels - responder_fraction) * 2.0 + rng.normal(0.0, 0.7, patients) if signal else None
    if signal:
        planted = [all_genes.index(g) for g in SIGNAL_GENES if g in all_genes]
        log2_tpm[:, planted] += effect_log2 * labels[:, None] + 0.3 * rng.normal(size=(patients, len(planted)))
    tpm = 2.0**log2_tpm
    tpm = tpm / tpm.sum(axis=1, keepdims=True) * 1e6
    direction = rng.normal(size=embedding_dim)
    lesions = rng.normal(0.0, 1.0, size=(patients, 3, embedding_dim))
    if signal:
        lesions += 0.8 * propensity[:, None, None] * direction[None, None, :]
    clinical = []
    for i in range(patients):
        shift = float(propensity[i]) if signal else 0.0
        neutrophils = float(np.clip(rng.normal(5.0 - 1.0 * shift, 1.2), 1.0, 15.0))
        lymph_and_others = float(np.clip(rng.normal(2.5 + 0.5 * shift, 0.6), 0.8, 8.0))
        clinical.append(
            {
                "PatientID": f"SYN{i:04d}",
                "age": f"{rng.integers(35, 85)}",
                "sex": "MF"[int(rng.integers(0, 2))],
                "ecog": f"{int(np.clip(round(rng.normal(1.0 - 0.4 * shift, 0.7)), 0, 3))}",
                "ldh": f"{max(80.0, rng.normal(240.0 - 40.0 * shift, 50.0)):.0f}",
                "ldh_uln": "250",
                "neutrophils": f"{neutrophils:.2f}",
                "wbc": f"{neutrophils + lymph_and_others:.2f}",
                "best_response": ("PR" if labels[i] else "PD"),
            }
        )
    return SyntheticCohort(
        sample_ids=tuple(f"S{i:04d}" for i in range(patients)),
        patient_ids=tuple(f"SYN{i:04d}" for i in range(patients)),
        genes=all_genes,
        tpm=tpm,
        labels=labels,
        imaging=lesions.astype(np.float32),
        clinical=tuple(clinical),
    )


def write_training_table(cohort: SyntheticCohort, path: Path) -> Path:
    """Samples × genes with a `response` column: the `train expression --cohort` format."""
    with Path(path).open("w") as handle:
        handle.write("sample_id,response," + ",".join(cohort.genes) + "\n")
        for sample, label, row in zip(cohort.sample_ids, cohort.labels, cohort.tpm):
            handle.write(f"{sample},{label}," + ",".join(f"{v:.4f}" for v in row) + "\n")
    return Path(path)


def write_import_files(cohort: SyntheticCohort, folder: Path) -> tuple[Path, Path, Path]:
    """(genes × samples TSV, sample → patient mapping CSV, clinical CSV): the `immunode import` formats."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    matrix, mapping, clinical = folder / "expression.tsv", folder / "samples.csv", folder / "clinical.csv"
    with matrix.open("w") as handle:
        handle.write("gene\t" + "\t".join(cohort.sample_ids) + "\n")
        for j, gene in enumerate(cohort.genes):
            handle.write(gene + "\t" + "\t".join(f"{v:.4f}" for v in cohort.tpm[:, j]) + "\n")
    with mapping.open("w") as handle:
        handle.write("sample_id,PatientID,IssuerOfPatientID\n")
        handle.writelines(f"{s},{p},SYNTH\n" for s, p in zip(cohort.sample_ids, cohort.patient_ids))
    columns = list(cohort.clinical[0])
    with clinical.open("w") as handle:
        handle.write(",".join(columns[:1] + ["IssuerOfPatientID"] + columns[1:]) + "\n")
        for record in cohort.clinical:
            cells = [record[c] for c in columns]
            handle.write(",".join(cells[:1] + ["SYNTH"] + cells[1:]) + "\n")
    return matrix, mapping, clinical
