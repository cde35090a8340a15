"""Delta-radiomics of the longitudinal CT method: Δ = (T1 − T0)/T0 per feature of the primary (P) and the
merged metastases (M); the published signature that separated oligo- from systemic progression;. The research
statistics of the method are in `research.radiomics`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.ct.types import DeltaFeature, relative_change
from pipelines.errors import SignatureFileError


@dataclass(frozen=True)
class PublishedFeature:
    name: str
    oligo_median: float
    systemic_median: float
    auc: float | None


def read_published_signature(path: Path) -> tuple[PublishedFeature, ...]:
    """The published Δ features (columns feature, oligoAR_median, sysAR_median, auc)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        features = []
        for row in rows:
            auc = row.get("auc", "")
            features.append(
                PublishedFeature(
                    row["feature"],
                    float(row["oligoAR_median"]),
                    float(row["sysAR_median"]),
                    float(auc) if auc else None,
                )
            )
    except (OSError, KeyError, ValueError) as error:
        raise SignatureFileError(f"published signature {path}: {error.__class__.__name__}: {error}") from None
    if not features:
        raise SignatureFileError(f"published signature {path}: no rows")
    return tuple(features)


def deltas(
    t0: Mapping[str, Mapping[str, float]], t1: Mapping[str, Mapping[str, float]], volumes: Sequence[str] = ("P", "M")
) -> dict[str, float | None]:
    """Δ of every feature present at both time points, named "<volume>_<pyradiomics name>"."""
    result: dict[str, float | None] = {}
    for volume in volumes:
        before, after = t0.get(volume, {}), t1.get(volume, {})
        for name in sorted(set(before) & set(after)):
            result[f"{volume}_{name}"] = relative_change(before[name], after[name])
    return result


def _value(features: Mapping[str, Mapping[str, float]], name: str) -> float | None:
    volume, feature = name.split("_", 1)
    return features.get(volume, {}).get(feature)


def signature_features(
    published: Sequence[PublishedFeature],
    t0: Mapping[str, Mapping[str, float]],
    t1: Mapping[str, Mapping[str, float]],
) -> tuple[DeltaFeature, ...]:
    """Each published feature's T0, T1, Δ and the published group median it lies nearer to."""
    out = []
    for feature in published:
        before, after = _value(t0, feature.name), _value(t1, feature.name)
        delta = relative_change(before, after)
        if before is None or after is None:
            volume = feature.name.split("_", 1)[0]
            why = f"no {volume} volume at {'T0' if before is None else 'T1'}"
        elif delta is None:
            why = "baseline value 0 and follow-up value not 0: relative change not defined"
        else:
            why = ""
        nearer = ""
        if delta is not None:
            d_oligo, d_sys = abs(delta - feature.oligo_median), abs(delta - feature.systemic_median)
            nearer = "oligo" if d_oligo < d_sys else "systemic" if d_sys < d_oligo else "equidistant"
        out.append(
            DeltaFeature(
                feature.name,
                before,
                after,
                delta,
                feature.oligo_median,
                feature.systemic_median,
                feature.auc,
                nearer,
                why,
            )
        )
    return tuple(out)
