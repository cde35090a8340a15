"""Route stage: which pipelines run on a completed study, by the rules of `config.yaml`."""

from __future__ import annotations

import re

from immunode.config import RoutingRule, SeriesMatch
from pipelines.types import CompletedStudy, RouteDecision, SeriesSummary


def series_matches(match: SeriesMatch, series: SeriesSummary) -> bool:
    if match.modality is not None and series.modality.upper() != match.modality.upper():
        return False
    if match.series_description is not None and not re.search(match.series_description, series.series_description):
        return False
    if match.manufacturer is not None and not re.search(match.manufacturer, series.manufacturer):
        return False
    return True


def route(study: CompletedStudy, rules: list[RoutingRule]) -> tuple[RouteDecision, ...]:
    decisions = []
    for rule in rules:
        selected = tuple(s.series_instance_uid for s in study.series if series_matches(rule.series, s))
        if selected:
            decisions.append(RouteDecision(rule.name, rule.pipeline, selected))
    return tuple(decisions)
