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
