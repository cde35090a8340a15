"""Reading SR content trees in tests: every NUM value by concept name, every TEXT value."""

from __future__ import annotations


def sr_numbers(items: object) -> dict[str, list[float]]:
    """Concept name → values of every NUM content item of an SR content tree (e.g. `sr.ContentSequence`)."""
    found: dict[str, list[float]] = {}
    for item in items or []:
        if item.ValueType == "NUM":
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            found.setdefault(name, []).append(float(item.MeasuredValueSequence[0].NumericValue))
        for name, values in sr_numbers(item.get("ContentSequence")).items():
            found.setdefault(name, []).extend(values)
    return found


def sr_texts(items: object) -> str:
    """Every TEXT value of an SR content tree, joined by spaces."""
    found = []
    for item in items or []:
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found.append(sr_texts(item.get("ContentSequence")))
    return " ".join(part for part in found if part)


def study_results(sr: object) -> tuple[dict[str, float], dict[str, str]]:
    """The results of the patient or study in a TID 1500 report: measurement name -> value under "Derived
    Imaging Measurements", and evaluation name -> coded value meaning under "Qualitative Evaluations"."""
    numbers: dict[str, float] = {}
    codes: dict[str, str] = {}
    for container in sr.ContentSequence:
        code = container.ConceptNameCodeSequence[0].CodeValue
        for item in container.get("ContentSequence", []) if code in ("126011", "C0034375") else []:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                numbers[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                codes[name] = item.ConceptCodeSequence[0].CodeMeaning
    return numbers, codes
