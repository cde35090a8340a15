"""Reading and checking the genomic and clinical files an administrator imports (`immunode import ...`).

Every value is checked before anything is stored; each rejected value is reported with its row, column and
reason, and a file with any problem is rejected whole (the import is transactional). Derived values are
computed here: CytAct and the IFN-gamma score per expression sample, dNLR and the LIPI category per patient.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from common.types import (
    CLINICAL_FIELDS,
    BloodImport,
    BloodValue,
    ClinicalImport,
    ClinicalVariables,
    ExpressionImport,
    ExpressionProfile,
)
from models.expression_scores import per_million, sample_cytact, sample_ifng6
from pipelines.errors import ImportRejected
from pipelines.omics.settings import BloodMarker
from pipelines.omics.types import ImportProblem

DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}
# PatientID and IssuerOfPatientID are DICOM LO: at most 64 characters, no backslash or control characters.
LO_PATTERN = re.compile(r"^[^\\\x00-\x1f]{1,64}$")
RESPONSES = ("CR", "PR", "SD", "PD", "NE")
# The clinical file's columns: the identity, then the imported clinical fields (two with shorter names in files).
FILE_NAMES = {"age_years": "age", "white_cells": "wbc"}
DERIVED = ("dnlr", "lipi")
CLINICAL_COLUMNS = ("PatientID", "IssuerOfPatientID") + tuple(
    FILE_NAMES.get(name, name) for name in CLINICAL_FIELDS if name not in DERIVED
)
BLOOD_TIME_POINTS = ("T0", "T1")
# LIPI (Mezquita et al. 2018): one point each for dNLR > 3 and LDH above the upper limit of normal.
LIPI_DNLR_CUTOFF = 3.0
LIPI_CATEGORIES = ("good", "intermediate", "poor")


def _read_rows(path: Path, delimiter: str | None, problems: list[ImportProblem]) -> list[list[str]]:
    """Rows of a delimited file; a delimiter that does not split the header is reported, not guessed."""
    name = path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        problems.append(ImportProblem(name, 1, "", f"not UTF-8 text ({error.reason} at byte {error.start})"))
        return []
    expected = delimiter or DELIMITERS.get(path.suffix.lower(), ",")
    rows = [row for row in csv.reader(text.splitlines(), delimiter=expected)]
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        problems.append(ImportProblem(name, 1, "", "the file is empty"))
        return []
    if len(rows[0]) < 2:
        others = [d for d in DELIMITER_NAMES if d != expected and d in rows[0][0]]
        hint = (
            f"; it looks {DELIMITER_NAMES[others[0]]}-separated (give --delimiter or use the matching extension)"
            if others
            else ""
        )
        problems.append(
            ImportProblem(
                name, 1, "", f"the header has one column when split on {DELIMITER_NAMES.get(expected, expected)}{hint}"
            )
        )
        return []
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if row and len(row) != width:
            problems.append(ImportProblem(name, number, "", f"has {len(row)} fields, the header has {width}"))
    return rows


def _identifier(value: str) -> bool:
    return bool(LO_PATTERN.match(value)) and value == value.strip()


def read_sample_mapping(path: Path, delimiter: str | None, problems: list[ImportProblem]) -> dict[str, tuple[str, str]]:
    """sample_id → (PatientID, IssuerOfPatientID) from a file with those columns (issuer optional)."""
    rows = _read_rows(path, delimiter, problems)
    if not rows:
        return {}
    header = [cell.strip() for cell in rows[0]]
    for column in ("sample_id", "PatientID"):
        if column not in header:
            problems.append(ImportProblem(path.name, 1, column, "required column is missing"))
    if problems:
        return {}
    mapping: dict[str, tuple[str, str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            continue
        cells = dict(zip(header, (cell.strip() for cell in row)))
        sample, patient, issuer = cells["sample_id"], cells["PatientID"], cells.get("IssuerOfPatientID", "")
        if not _identifier(patient):
            problems.append(ImportProblem(path.name, number, "PatientID", f"not a valid DICOM PatientID: {patient!r}"))
        elif issuer and not _identifier(issuer):
            problems.append(
                ImportProblem(path.name, number, "IssuerOfPatientID", f"not a valid DICOM issuer: {issuer!r}")
            )
        elif sample in mapping and mapping[sample] != (patient, issuer):
            problems.append(ImportProblem(path.name, number, "sample_id", f"sample {sample!r} mapped twice"))
        else:
            mapping[sample] = (patient, issuer)
    return mapping


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def read_expression_file(
    path: Path,
    mapping_path: Path,
    units: str,
    orientation: str | None = None,
    delimiter: str | None = None,
) -> ExpressionImport:
    """Parse and check an expression matrix; raises ImportRejected listing every problem."""
    if units not in ("tpm", "counts"):
        raise ValueError(f"units must be 'tpm' or 'counts', not {units!r}")
    path, problems = Path(path), []
    mapping = read_sample_mapping(Path(mapping_path), None, problems)
    rows = _read_rows(path, delimiter, problems)
    if problems:
        raise ImportRejected(problems)
    name = path.name
    header, body = [cell.strip() for cell in rows[0]], [row for row in rows[1:] if row]
    header_samples = sum(cell in mapping for cell in header[1:])
    column_samples = sum(row[0].strip() in mapping for row in body)
    if orientation is None:
        if header_samples == 0 and column_samples == 0:
            raise ImportRejected(
                [
                    ImportProblem(
                        name,
                        1,
                        "",
                        "no sample of the mapping file is in the header or the first column: cannot tell the "
                        "orientation (check the mapping, or give --orientation)",
                    )
                ]
            )
        orientation = "genes x samples" if header_samples >= column_samples else "samples x genes"
        reason = (
            f"{header_samples} of {len(header) - 1} header cells are mapped sample IDs"
            if orientation == "genes x samples"
            else f"{column_samples} of {len(body)} first-column cells are mapped sample IDs"
        )
    else:
        reason = "given on the command line"
    by_gene_rows = orientation == "genes x samples"
    # Cell grid as (sample label, location) x (gene label, location); locations are (row, column name).
    if by_gene_rows:
        samples = [(cell, 1, cell) for cell in header[1:]]
        genes = [(row[0].strip(), number, header[0]) for number, row in enumerate(body, start=2)]
    else:
        samples = [(row[0].strip(), number, header[0]) for number, row in enumerate(body, start=2)]
        genes = [(cell, 1, cell) for cell in header[1:]]
    seen_genes: dict[str, int] = {}
    for position, (gene, row, column) in enumerate(genes):
        symbol = gene.upper()
        if not symbol:
            problems.append(ImportProblem(name, row, column, "empty gene symbol"))
        elif symbol in seen_genes:
            first = genes[seen_genes[symbol]]
            where = f"row {first[1]}" if by_gene_rows else f"column {first[2]!r}"
            problems.append(ImportProblem(name, row, column, f"duplicate gene {symbol!r} (first at {where})"))
        else:
            seen_genes[symbol] = position
    seen_samples: set[str] = set()
    for sample, row, column in samples:
        if sample in seen_samples:
            problems.append(ImportProblem(name, row, column, f"duplicate sample {sample!r}"))
        elif sample not in mapping:
            problems.append(
                ImportProblem(name, row, column, f"unknown patient: sample {sample!r} is not in the mapping file")
            )
        seen_samples.add(sample)
    values = [[0.0] * len(genes) for _ in samples]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            continue
        for index, cell in enumerate(row[1:]):
            column = header[index + 1]
            text = cell.strip()
            value = _number(text)
            if not text:
                reason_text = "empty value"
            elif value is None:
                reason_text = f"not a number: {text!r}"
            elif not math.isfinite(value):
                reason_text = f"not a finite number: {text!r}"
            elif value < 0:
                reason_text = f"negative expression value {text}"
            elif units == "counts" and value != int(value):
                reason_text = f"raw counts must be whole numbers, got {text}"
            else:
                reason_text = ""
            if reason_text:
                problems.append(ImportProblem(name, number, column, reason_text))
                continue
            sample_index, gene_index = (index, number - 2) if by_gene_rows else (number - 2, index)
            values[sample_index][gene_index] = value  # type: ignore[assignment]
    if problems:
        raise ImportRejected(problems)
    symbols = [gene.upper() for gene, _, _ in genes]
    profiles = []
    for (sample, _, _), sample_values in zip(samples, values):
        by_gene = dict(zip(symbols, sample_values))
        scaled = per_million(by_gene)
        patient, issuer = mapping[sample]
        profiles.append(
            ExpressionProfile(
                sample_id=sample,
                patient_id=patient,
                issuer_of_patient_id=issuer,
                units=units,
                values=by_gene,
                cytact=sample_cytact(scaled),
                ifng6=sample_ifng6(scaled),
            )
        )
    return ExpressionImport(name, orientation, reason, len(symbols), tuple(profiles))


def derived_nlr(neutrophils: float | None, white_cells: float | None) -> float | None:
    """dNLR = neutrophils / (white cells − neutrophils) (Mezquita et al. 2018)."""
    if neutrophils is None or white_cells is None or white_cells <= neutrophils:
        return None
    return neutrophils / (white_cells - neutrophils)


def lipi_category(dnlr: float | None, ldh: float | None, ldh_uln: float | None) -> str:
    """good (0 factors), intermediate (1) or poor (2) from dNLR > 3 and LDH > ULN; empty if either is unknown."""
    if dnlr is None or ldh is None or ldh_uln is None:
        return ""
    return LIPI_CATEGORIES[int(dnlr > LIPI_DNLR_CUTOFF) + int(ldh > ldh_uln)]


def _clinical_value(column: str, text: str) -> tuple[object, str]:
    """(value, "") or (None, reason) for one cell of the clinical file; blank cells are unknown (None)."""
    if not text:
        return None, ""
    if column == "sex":
        value = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(text.upper())
        return (value, "") if value else (None, f"sex must be M, F or O, got {text!r}")
    if column == "best_response":
        return (text.upper(), "") if text.upper() in RESPONSES else (None, f"must be one of {', '.join(RESPONSES)}")
    if column == "therapy_start":
        for pattern in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return datetime.strptime(text, pattern).date(), ""
            except ValueError:
                pass
        return None, f"not a date (YYYY-MM-DD or YYYYMMDD): {text!r}"
    if column in ("pfs_event", "os_event"):
        return ({"1": True, "0": False}[text], "") if text in ("0", "1") else (None, f"must be 0 or 1, got {text!r}")
    value = _number(text)
    if value is None or not math.isfinite(value):
        return None, f"not a number: {text!r}"
    limits = {
        "age": (0, 120),
        "ecog": (0, 5),
        "ldh": (0, math.inf),
        "ldh_uln": (0, math.inf),
        "neutrophils": (0, math.inf),
        "wbc": (0, math.inf),
        "pfs_months": (0, math.inf),
        "os_months": (0, math.inf),
    }
    low, high = limits[column]
    if not low <= value <= high or (column in ("ldh_uln", "wbc") and value == 0):
        return None, f"out of range: {text}"
    if column == "ecog":
        if value != int(value):
            return None, f"ECOG must be a whole number 0-5, got {text}"
        return int(value), ""
    return value, ""


def read_clinical_file(path: Path, delimiter: str | None = None) -> ClinicalImport:
    """Parse and check a clinical table (one row per patient); raises ImportRejected listing every problem."""
    path, problems = Path(path), []
    rows = _read_rows(path, delimiter, problems)
    if problems:
        raise ImportRejected(problems)
    name, header = path.name, [cell.strip() for cell in rows[0]]
    for column in header:
        if column not in CLINICAL_COLUMNS:
            problems.append(
                ImportProblem(name, 1, column, f"unknown column; expected some of {', '.join(CLINICAL_COLUMNS)}")
            )
    if "PatientID" not in header:
        problems.append(ImportProblem(name, 1, "PatientID", "required column is missing"))
    if problems:
        raise ImportRejected(problems)
    records: list[ClinicalVariables] = []
    seen: dict[tuple[str, str], int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or len(row) != len(header):
            continue
        cells = dict(zip(header, (cell.strip() for cell in row)))
        patient, issuer = cells["PatientID"], cells.get("IssuerOfPatientID", "")
        if not _identifier(patient):
            problems.append(ImportProblem(name, number, "PatientID", f"not a valid DICOM PatientID: {patient!r}"))
            continue
        if issuer and not _identifier(issuer):
            problems.append(ImportProblem(name, number, "IssuerOfPatientID", f"not a valid DICOM issuer: {issuer!r}"))
            continue
        if (patient, issuer) in seen:
            problems.append(
                ImportProblem(name, number, "PatientID", f"patient {patient!r} already at row {seen[patient, issuer]}")
            )
            continue
        seen[patient, issuer] = number
        parsed: dict[str, object] = {}
        for column in header:
            if column in ("PatientID", "IssuerOfPatientID"):
                continue
            value, reason = _clinical_value(column, cells[column])
            if reason:
                problems.append(ImportProblem(name, number, column, reason))
            parsed[column] = value
        neutrophils, white_cells = parsed.get("neutrophils"), parsed.get("wbc")
        if neutrophils is not None and white_cells is not None and neutrophils >= white_cells:  # type: ignore[operator]
            problems.append(
                ImportProblem(name, number, "neutrophils", "neutrophils must be below the white-cell count (wbc)")
            )
        dnlr = derived_nlr(neutrophils, white_cells)  # type: ignore[arg-type]
        records.append(
            ClinicalVariables(
                patient_id=patient,
                issuer_of_patient_id=issuer,
                age_years=parsed.get("age"),  # type: ignore[arg-type]
                sex=parsed.get("sex") or "",  # type: ignore[arg-type]
                ecog=parsed.get("ecog"),  # type: ignore[arg-type]
                ldh=parsed.get("ldh"),  # type: ignore[arg-type]
                ldh_uln=parsed.get("ldh_uln"),  # type: ignore[arg-type]
                neutrophils=neutrophils,  # type: ignore[arg-type]
                white_cells=white_cells,  # type: ignore[arg-type]
                therapy_start=parsed.get("therapy_start"),  # type: ignore[arg-type]
                best_response=parsed.get("best_response") or "",  # type: ignore[arg-type]
                pfs_months=parsed.get("pfs_months"),  # type: ignore[arg-type]
                pfs_event=parsed.get("pfs_event"),  # type: ignore[arg-type]
                os_months=parsed.get("os_months"),  # type: ignore[arg-type]
                os_event=parsed.get("os_event"),  # type: ignore[arg-type]
                dnlr=dnlr,
                lipi=lipi_category(dnlr, parsed.get("ldh"), parsed.get("ldh_uln")),  # type: ignore[arg-type]
            )
        )
    if problems:
        raise ImportRejected(problems)
    return ClinicalImport(name, tuple(records))


def read_blood_file(path: Path, markers: Sequence[BloodMarker], delimiter: str | None = None) -> BloodImport:
    """Parse and check a blood immune-profile table: PatientID, optional IssuerOfPatientID, time_point (T0 or T1),
    optional date, then columns of the declared markers (blank cells: not measured). Raises ImportRejected
    listing every problem; a column that is not declared is a problem."""
    path, problems = Path(path), []
    rows = _read_rows(path, delimiter, problems)
    if problems:
        raise ImportRejected(problems)
    name, header = path.name, [cell.strip() for cell in rows[0]]
    declared = {marker.name: marker for marker in markers}
    fixed = ("PatientID", "IssuerOfPatientID", "time_point", "date")
    for column in header:
        if column not in fixed and column not in declared:
            problems.append(
                ImportProblem(
                    name,
                    1,
                    column,
                    f"not a declared blood marker (pipelines.response.blood_markers: {', '.join(declared) or 'none'})",
                )
            )
    for required in ("PatientID", "time_point"):
        if required not in header:
            problems.append(ImportProblem(name, 1, required, "required column is missing"))
    if problems:
        raise ImportRejected(problems)
    values: list[BloodValue] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or len(row) != len(header):
            continue
        cells = dict(zip(header, (cell.strip() for cell in row)))
        patient, issuer, time_point = cells["PatientID"], cells.get("IssuerOfPatientID", ""), cells["time_point"]
        if not _identifier(patient) or (issuer and not _identifier(issuer)):
            problems.append(ImportProblem(name, number, "PatientID", f"not a valid DICOM identity: {patient!r}"))
            continue
        if time_point.upper() not in BLOOD_TIME_POINTS:
            problems.append(ImportProblem(name, number, "time_point", f"must be T0 or T1, got {time_point!r}"))
            continue
        key = (patient, issuer, time_point.upper())
        if key in seen:
            problems.append(ImportProblem(name, number, "time_point", f"{key[2]} already given at row {seen[key]}"))
            continue
        seen[key] = number
        when = None
        if cells.get("date"):
            when, reason = _clinical_value("therapy_start", cells["date"])
            if reason:
                problems.append(ImportProblem(name, number, "date", reason))
        for column, text in cells.items():
            if column in fixed or not text:
                continue
            value = _number(text)
            if value is None or not math.isfinite(value) or value < 0:
                problems.append(ImportProblem(name, number, column, f"not a non-negative number: {text!r}"))
                continue
            values.append(BloodValue(patient, issuer, key[2], column, value, declared[column].unit, when))
    if problems:
        raise ImportRejected(problems)
    return BloodImport(path.name, tuple(values))
