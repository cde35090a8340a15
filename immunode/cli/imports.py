"""Bringing data into the store: import expression, clinical, blood. These create (and migrate) the index."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from immunode.cli.common import index_session, print_problems, settings

T = TypeVar("T")


def _delimiter(text: str | None) -> str | None:
    return {"tab": "\t", "comma": ",", "semicolon": ";"}.get(text or "", text or None)


def _imported(args: argparse.Namespace, read: Callable[[], T], upsert: Callable[[Session, T], tuple[int, int]]) -> T:
    """Read and check an import file, then store it in one transaction; a rejected file is recorded as rejected
    (ImportRejected propagates with every problem) and nothing of it is stored."""
    from pipelines.errors import ImportRejected
    from storage import patients

    try:
        imported = read()
    except ImportRejected as error:
        with index_session(args, create=True) as session:
            patients.record_import_rejected(session, Path(args.file).name, len(error.problems))
        raise
    with index_session(args, create=True) as session:
        counts = upsert(session, imported)
    print(f"{Path(args.file).name}: stored, {counts[0]} new, {counts[1]} updated")
    return imported


def cmd_import_expression(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_expression_file
    from storage import patients

    orientation = {"genes-x-samples": "genes x samples", "samples-x-genes": "samples x genes"}.get(args.orientation)
    try:
        imported = _imported(
            args,
            lambda: read_expression_file(
                Path(args.file), Path(args.mapping), args.units, orientation, _delimiter(args.delimiter)
            ),
            patients.upsert_expression,
        )
    except ImportRejected as error:
        return print_problems(error)
    print(f"{imported.file}: read as {imported.orientation} ({imported.orientation_reason}); units {args.units}")
    if args.units == "counts":
        print("  raw counts: scores use counts per million of the library total (no gene-length correction)")
    print(f"  {len(imported.profiles)} sample(s), {imported.genes} genes")
    for profile in imported.profiles:
        cytact = "n/a (GZMA or PRF1 absent)" if profile.cytact is None else f"{profile.cytact:.3f}"
        ifng = "n/a (a gene absent)" if profile.ifng6 is None else f"{profile.ifng6:.3f}"
        print(f"  {profile.sample_id} -> patient {profile.patient_id}: CytAct {cytact}, IFN-gamma 6-gene {ifng}")
    return 0


def cmd_import_clinical(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_clinical_file
    from storage import patients

    try:
        imported = _imported(
            args, lambda: read_clinical_file(Path(args.file), _delimiter(args.delimiter)), patients.upsert_clinical
        )
    except ImportRejected as error:
        return print_problems(error)
    print(f"{imported.file}: {len(imported.records)} patient(s)")
    for record in imported.records:
        dnlr = "n/a" if record.dnlr is None else f"{record.dnlr:.2f}"
        print(f"  {record.patient_id}: dNLR {dnlr}, LIPI {record.lipi or 'n/a (dNLR or LDH/ULN unknown)'}")
    return 0


def cmd_import_blood(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_blood_file
    from storage import patients

    markers = settings(args).pipelines.response.blood_markers
    try:
        imported = _imported(
            args, lambda: read_blood_file(Path(args.file), markers, _delimiter(args.delimiter)), patients.upsert_blood
        )
    except ImportRejected as error:
        return print_problems(error)
    people = {(v.patient_id, v.issuer_of_patient_id) for v in imported.values}
    print(f"{imported.file}: {len(imported.values)} value(s) of {len(people)} patient(s)")
    return 0


DELIMITER_HELP = "tab, comma, semicolon or a character (default from the extension)"


def register(commands: argparse._SubParsersAction) -> None:
    imports = commands.add_parser("import", help="import expression or clinical data into the store")
    kinds = imports.add_subparsers(dest="kind", required=True)
    expression = kinds.add_parser("expression", help="an expression matrix (CSV/TSV) and a sample mapping")
    expression.add_argument("file")
    expression.add_argument("--mapping", required=True, help="CSV: sample_id, PatientID, IssuerOfPatientID")
    expression.add_argument("--units", required=True, choices=("tpm", "counts"))
    expression.add_argument("--orientation", choices=("genes-x-samples", "samples-x-genes"))
    expression.add_argument("--delimiter", help=DELIMITER_HELP)
    expression.set_defaults(handler=cmd_import_expression)
    clinical = kinds.add_parser("clinical", help="a clinical table (CSV/TSV), one row per patient")
    clinical.add_argument("file")
    clinical.add_argument("--delimiter", help=DELIMITER_HELP)
    clinical.set_defaults(handler=cmd_import_clinical)
    blood = kinds.add_parser(
        "blood", help="blood immune profile at T0/T1: PatientID, time_point, [date], declared marker columns"
    )
    blood.add_argument("file")
    blood.add_argument("--delimiter", help=DELIMITER_HELP)
    blood.set_defaults(handler=cmd_import_blood)
