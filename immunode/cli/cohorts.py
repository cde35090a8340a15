"""Cohorts read from the store, shared by the research, training, evaluation and reproduction commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from immunode.cli.common import index_session, settings
from immunode.config import Settings

if TYPE_CHECKING:
    from research.outcomes import PatientRow, Selection
    from research.radiomics import DeltaTable
    from research.fusion import FusionCohort


def stored_series(args: argparse.Namespace, config: Settings) -> Callable[[str], list[Path]]:
    """The files of a stored series by its UID (the index is opened only when a manifest names one)."""
    from storage import studies
    from storage.files import FileLayout

    layout = FileLayout(config.storage.root)

    def paths(series_uid: str) -> list[Path]:
        with index_session(args) as session:
            return studies.series_paths(session, layout, series_uid)

    return paths


def cytact_inputs(
    args: argparse.Namespace, rows: Sequence[PatientRow]
) -> tuple[list, dict[tuple[str, str], date]]:
    """The stored PET CytAct analyses, and each patient's therapy start (the outcome table's, else the imported
    clinical data's)."""
    from storage import patients, results

    with index_session(args) as session:
        analyses = results.pet_cytact_analyses(session)
        imported = patients.all_patient_data(session)
    starts = {k: d.clinical.therapy_start for k, d in imported.items() if d.clinical and d.clinical.therapy_start}
    starts |= {(r.patient_id, r.issuer): r.therapy_start for r in rows if r.therapy_start is not None}
    return analyses, starts


def cytact_selection(
    args: argparse.Namespace, rows: Sequence[PatientRow], window_days: int | None, model: str | None = None
) -> Selection:
    """Per patient of the outcome table the stored CytAct analysis the method uses: the latest PET within
    `window_days` before the therapy start (the outcome table's, else the imported clinical data's)."""
    from research import outcomes

    analyses, starts = cytact_inputs(args, rows)
    return outcomes.choose_analyses(analyses, starts, window_days, model)


def delta_table(args: argparse.Namespace) -> DeltaTable:
    """The Δ table of a CSV, or of the node's patients with acquired resistance (courses from the store); patients
    left out are printed with why."""
    from pipelines.ct.pipeline import CT_RADIOMICS
    from research import radiomics as research
    from storage import patients, results

    labels = research.read_labels(Path(args.labels)) if args.labels else None
    if args.table:
        table = research.read_table(Path(args.table))
        return table if labels is None else research.relabelled(table, labels)
    config = settings(args)
    with index_session(args) as session:
        assessments = results.ct_assessments(session, CT_RADIOMICS.name)
        clinical = {key: data.clinical for key, data in patients.all_patient_data(session).items() if data.clinical}
    oligo_max = CT_RADIOMICS.settings(config.pipelines).oligo_max_lesions
    table, left_out = research.table_from_store(research.patient_courses(assessments, clinical, oligo_max), labels)
    for reason in left_out:
        print(f"  left out {reason}")
    return table


def fusion_inputs(args: argparse.Namespace, expression_weights: Path | None, imaging_dim: int) -> FusionCohort:
    from research.fusion import fusion_cohort_data, read_fusion_cohort
    from storage import patients, results

    cohort = read_fusion_cohort(Path(args.cohort))
    with index_session(args) as session:
        data = patients.all_patient_data(session)
        embeddings = results.latest_lesion_embeddings(session)
    mil = getattr(args, "mil_weights", None) or settings(args).pipelines.histology.mil_weights
    return fusion_cohort_data(cohort, data, embeddings, expression_weights, imaging_dim, Path(mil) if mil else None)
