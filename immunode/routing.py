"""Route stage: which pipelines run on a completed study, by the rules of `config.yaml` and the registry."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.states import JobState
from immunode.config import RoutingRule, SeriesMatch
from pipelines.registry import Pipeline, Registry
from storage.types import CompletedStudy, NewJob, SeriesSummary


@dataclass(frozen=True)
class RouteDecision:
    rule: str
    pipeline: Pipeline
    series_instance_uids: tuple[str, ...]

    def job(self) -> NewJob:
        """The job to queue; a longitudinal pipeline's job first goes through the pairing stage."""
        state = JobState.PAIRING if self.pipeline.longitudinal else JobState.PENDING
        return NewJob(self.rule, self.pipeline.name, self.series_instance_uids, state)


def series_matches(match: SeriesMatch, series: SeriesSummary) -> bool:
    if match.modality is not None and series.modality.upper() != match.modality.upper():
        return False
    if match.series_description is not None and not re.search(match.series_description, series.series_description):
        return False
    if match.manufacturer is not None and not re.search(match.manufacturer, series.manufacturer):
        return False
    return True


def route(study: CompletedStudy, rules: Sequence[RoutingRule], registry: Registry) -> tuple[RouteDecision, ...]:
    decisions = []
    for rule in rules:
        pipeline = registry.get(rule.pipeline)
        match = rule.series or SeriesMatch(modality=pipeline.modality)
        selected = tuple(s.series_instance_uid for s in study.series if series_matches(match, s))
        if selected:
            decisions.append(RouteDecision(rule.name, pipeline, selected))
    return tuple(decisions)
