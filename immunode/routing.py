"""Route stage: which pipelines run on a completed study, by the rules of `config.yaml` and the registry."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.states import JobState
from immunode.config import RoutingRule, SeriesMatch
from pipelines.registry import Pipeline, Registry
from storage.types import ArrivalKind, CompletedStudy, NewJob, SeriesSummary


@dataclass(frozen=True)
class RouteDecision:
    rule: str
    pipeline: Pipeline
    series_instance_uids: tuple[str, ...]
    reason: str = ""

    def job(self) -> NewJob:
        """The job to queue; a longitudinal pipeline's job first goes through the pairing stage."""
        state = JobState.PAIRING if self.pipeline.longitudinal else JobState.PENDING
        return NewJob(self.rule, self.pipeline.name, self.series_instance_uids, state, self.reason)


def arrival_reason(study: CompletedStudy) -> str:
    """Why the study is analysed (again), in words: a new version of its results states it."""
    if study.arrival is ArrivalKind.FIRST:
        return f"first analysis of the study (revision {study.revision})"
    parts = [
        f"{a.instances} {a.modality or 'object'} instance(s) of series {a.series_instance_uid} from "
        f"{', '.join(a.calling_ae_titles) or 'an unnamed AE'} at {a.first_received_at:%Y-%m-%d %H:%M:%S} UTC"
        for a in study.arrived
        if not a.own
    ]
    what = (
        "a reader's annotation arrived after the analysis"
        if study.arrival is ArrivalKind.ANNOTATIONS
        else "the study grew after its analysis"
    )
    return f"{what} (revision {study.revision}): " + ("; ".join(parts) or "instances replaced")


def series_matches(match: SeriesMatch, series: SeriesSummary) -> bool:
    if match.modality is not None and series.modality.upper() != match.modality.upper():
        return False
    if match.series_description is not None and not re.search(match.series_description, series.series_description):
        return False
    if match.manufacturer is not None and not re.search(match.manufacturer, series.manufacturer):
        return False
    return True


def route(study: CompletedStudy, rules: Sequence[RoutingRule], registry: Registry) -> tuple[RouteDecision, ...]:
    """The rules' pipelines with the series they select; nothing when only our own results came back."""
    if study.arrival is ArrivalKind.OWN_RESULTS:
        return ()
    reason = arrival_reason(study)
    decisions = []
    for rule in rules:
        pipeline = registry.get(rule.pipeline)
        match = rule.series or SeriesMatch(modality=pipeline.modality)
        selected = tuple(s.series_instance_uid for s in study.series if series_matches(match, s))
        if selected:
            decisions.append(RouteDecision(rule.name, pipeline, selected, reason))
    return tuple(decisions)
