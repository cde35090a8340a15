"""DICOMweb client (PS3.18) through dicomweb-client and requests: results sent by STOW-RS, and baselines found by
QIDO-RS and retrieved by WADO-RS into this node's store.

- Sessions: a bearer token or HTTP Basic credentials read at each use from the file or environment variable the
  config names (never logged, never in the URL or the audit trail); TLS verified against the configured CA bundle
  (else the system's), with this node's client certificate where configured.
- STOW-RS (`send_batch`): one POST {url}/studies per batch, no retry inside the request (the dispatch stage's
  back-off and dead letters apply, as for C-STORE). An instance counts as delivered only when the response says so:
  HTTP 200 and not in the Failed SOP Sequence, or HTTP 202 and in the Referenced SOP Sequence (a Warning Reason is
  a warning, as 0xB000 is for C-STORE) and not failed. Anything else (4xx/5xx, a 202 that lists it as failed or
  not at all, no connection) is a failed attempt with the reason.
- QIDO-RS (`find_studies`): the patient's studies in the date window, with IssuerOfPatientID and
  ModalitiesInStudy. WADO-RS (`retrieve_study`): the whole study as stored (transfer-syntax=*), streamed to
  files, each instance checked and stored as a C-STORE would be (`dicom_node.multipart`).
Every request leaves one audit record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from requests.adapters import HTTPAdapter

from common.types import StudyFacts, parse_dicom_date
from common.version import __version__
from dicom_node.errors import BadMultipart, RetrieveError, SecretUnavailable
from dicom_node.multipart import DICOM, PartFiles, media_type, store_part
from dicom_node.scu import OutboundFile, SentBatch, sendable
from dicom_node.settings import (
    DicomWebDestination,
    DicomWebQueryRetrieveSettings,
    DicomWebService,
    SecretSource,
    TlsClientSettings,
)
from dicom_node.tls import client_context
from dicom_node.types import SendResult
from storage.audit import AuditEntry
from storage.errors import StorageError
from storage.schema import AuditDirection, AuditKind, AuditOutcome, utcnow
from storage.store import InstanceStore

logger = logging.getLogger(__name__)

Audit = Callable[[AuditEntry], None]
ALL_SYNTAXES = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
CHUNK = 1024 * 1024


def read_secret(source: SecretSource) -> str:
    """The secret from its file or environment variable; SecretUnavailable names where, never what."""
    if source.env is not None:
        value = os.environ.get(source.env, "").strip()
        if not value:
            raise SecretUnavailable(f"environment variable {source.env} is not set or empty")
        return value
    try:
        value = Path(source.file).read_text(encoding="utf-8").strip()  # type: ignore[arg-type]
    except (OSError, UnicodeDecodeError) as error:
        raise SecretUnavailable(f"cannot read {source.file}: {getattr(error, 'strerror', None) or error}") from None
    if not value:
        raise SecretUnavailable(f"{source.file} is empty")
    return value


class _TrustedCaAdapter(HTTPAdapter):
    """Verifies against the configured CA bundle whatever the environment says: requests lets REQUESTS_CA_BUNDLE
    or CURL_CA_BUNDLE override a session's own `verify`."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:  # type: ignore[override]
        kwargs["verify"] = self.ca_bundle
        return super().send(request, **kwargs)  # type: ignore[arg-type]


def session_for(service: DicomWebService) -> requests.Session:
    """A requests session authenticated and verified as configured (raises SecretUnavailable)."""
    session = requests.Session()
    session.headers["User-Agent"] = f"immunode/{__version__}"
    if service.tls is not None:
        if service.tls.ca_certificates is not None:
            session.mount("https://", _TrustedCaAdapter(str(service.tls.ca_certificates)))
        if service.tls.certificate is not None:
            session.cert = (str(service.tls.certificate), str(service.tls.private_key))
    auth = service.auth
    if auth is not None and auth.bearer_token is not None:
        session.headers["Authorization"] = f"Bearer {read_secret(auth.bearer_token)}"
    elif auth is not None:
        session.auth = (auth.username, read_secret(auth.password))  # type: ignore[arg-type]
    return session


def check_service(service: DicomWebService) -> None:
    """Start-up check of a service's TLS files (TlsSetupError) and secrets (SecretUnavailable)."""
    if service.tls is not None:
        tls = service.tls
        client_context(TlsClientSettings(ca_certificates=tls.ca_certificates, certificate=tls.certificate,
                                         private_key=tls.private_key))  # fmt: skip
    session_for(service).close()


def _peer(service: DicomWebService) -> tuple[str, int, bool]:
    parts = urlsplit(service.url)
    https = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if https else 80), https


def _audit_entry(
    service: DicomWebService,
    name: str,
    calling_ae_title: str,
    kind: AuditKind,
    outcome: AuditOutcome,
    detail: str,
    studies: tuple[str, ...] = (),
    instances: int = 0,
    at: object = None,
) -> AuditEntry:
    host, port, https = _peer(service)
    return AuditEntry(
        direction=AuditDirection.OUTBOUND,
        kind=kind,
        outcome=outcome,
        calling_ae_title=calling_ae_title,
        called_ae_title=name[:16],
        peer_host=host,
        peer_port=port,
        tls=https,
        detail=detail[:500],
        instances=instances,
        study_uids=studies,
        at=at or utcnow(),
    )


def _http_failure(error: requests.RequestException) -> str:
    """Why a request failed, without credentials (requests' messages carry the URL, which holds none)."""
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    if isinstance(error, requests.exceptions.SSLError):
        return f"TLS: {error}"
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time (timeout)"
    if isinstance(error, requests.exceptions.ConnectionError):
        return f"cannot connect: {error}"
    return f"{error.__class__.__name__}: {error}"


# --- STOW-RS -----------------------------------------------------------------------------------------------------


def _status_report(response: requests.Response | None) -> pydicom.Dataset:
    """The Store Instances Response Module of a response (JSON or XML), or an empty data set."""
    if response is None or not response.content:
        return pydicom.Dataset()
    kind = media_type(response.headers.get("Content-Type", ""))[0]
    try:
        if kind in ("application/dicom+json", "application/json"):
            payload = response.json()
            return pydicom.Dataset.from_json(payload[0] if isinstance(payload, list) else payload)
        if kind in ("application/dicom+xml", "application/xml", "text/xml"):
            from xml.etree.ElementTree import fromstring

            from dicomweb_client.web import _load_xml_dataset

            return _load_xml_dataset(fromstring(response.content))
    except Exception as error:  # a report that does not parse gives no per-instance status
        logger.warning("STOW-RS response not readable (%s): %s", kind, error)
    return pydicom.Dataset()


def _instance_results(
    uids: Sequence[str], http_status: int, report: pydicom.Dataset, http_detail: str
) -> list[SendResult]:
    failed = {}
    for item in report.get("FailedSOPSequence", []) or []:
        reason = item.get("FailureReason")
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = (
            f"STOW-RS failure reason 0x{int(reason):04X}" if reason is not None else "STOW-RS failure (no reason)"
        )
    referenced = {}
    for item in report.get("ReferencedSOPSequence", []) or []:
        warning = item.get("WarningReason")
        referenced[str(item.get("ReferencedSOPInstanceUID", ""))] = (
            f"STOW-RS warning 0x{int(warning):04X}" if warning is not None else ""
        )
    results = []
    for uid in uids:
        if uid in failed:
            results.append(SendResult(uid, False, f"{failed[uid]} ({http_detail})"))
        elif http_status == 200 or (http_status == 202 and uid in referenced):
            note = referenced.get(uid, "")
            results.append(SendResult(uid, True, f"{http_detail}{'; ' + note if note else ''}"))
        elif http_status == 202:
            results.append(SendResult(uid, False, f"{http_detail}: not among the stored instances of the response"))
        else:
            results.append(SendResult(uid, False, http_detail))
    return results


def send_batch(
    destination: DicomWebDestination, calling_ae_title: str, files: Sequence[OutboundFile], timeout_s: float
) -> SentBatch:
    """STOW-RS of the batch's readable files in one request; one result per file, in order."""
    results, datasets = sendable(files)
    if not datasets:
        return SentBatch(tuple(results), None)  # type: ignore[arg-type]
    started = utcnow()
    uids = [str(ds.SOPInstanceUID) for _, ds in datasets]
    responses: list[requests.Response] = []
    http_status, report, detail = 0, pydicom.Dataset(), ""
    try:
        client = DICOMwebClient(
            destination.url,
            session=session_for(destination),
            timeout=timeout_s,
            callback=lambda response, *args, **kwargs: responses.append(response) or response,
        )
        client.set_http_retry_params(retry=False)  # one attempt per dispatch attempt: dispatch owns back-off
        report = client.store_instances([ds for _, ds in datasets])
        http_status = responses[-1].status_code if responses else 200
        detail = f"HTTP {http_status}"
    except SecretUnavailable as error:
        detail = f"credentials unavailable: {error}"
    except requests.RequestException as error:
        detail = _http_failure(error)
        http_status = error.response.status_code if getattr(error, "response", None) is not None else 0
        report = _status_report(error.response)
    except ValueError as error:  # dicomweb-client: an unexpected response media type
        detail = f"unusable STOW-RS response: {error}"
    for (i, _), result in zip(datasets, _instance_results(uids, http_status, report, detail), strict=True):
        results[i] = result
    attempted = [results[i] for i, _ in datasets]
    sent = [r for r in attempted if r.ok]  # type: ignore[union-attr]
    outcome = AuditOutcome.COMPLETED if len(sent) == len(attempted) else AuditOutcome.PARTIAL
    if not sent:
        outcome = AuditOutcome.FAILED
    studies = tuple(dict.fromkeys(str(ds.get("StudyInstanceUID", "")) for i, ds in datasets if results[i].ok))
    failures = "; ".join(sorted({r.detail for r in attempted if not r.ok}))  # type: ignore[union-attr]
    audit = _audit_entry(
        destination,
        destination.name,
        calling_ae_title,
        AuditKind.SEND,
        outcome,
        f"STOW-RS {detail}" + (f": {failures}" if failures and failures != detail else ""),
        studies,
        len(sent),
        started,
    )
    return SentBatch(tuple(results), audit)  # type: ignore[arg-type]


# --- QIDO-RS and WADO-RS ---------------------------------------------------------------------------------------


def _facts(item: dict, issuer: str) -> StudyFacts:
    ds = pydicom.Dataset.from_json(item)
    modalities = ds.get("ModalitiesInStudy", "") or ""
    modalities = [modalities] if isinstance(modalities, str) else list(modalities)
    return StudyFacts(
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("PatientID", "")),
        str(ds.get("IssuerOfPatientID", "") or issuer),
        parse_dicom_date(str(ds.get("StudyDate", ""))),
        frozenset(str(m) for m in modalities if m),
    )


def find_studies(
    peer: DicomWebQueryRetrieveSettings,
    calling_ae_title: str,
    patient_id: str,
    issuer: str,
    earliest: date,
    latest: date,
    audit: Audit | None = None,
) -> list[StudyFacts]:
    """QIDO-RS: the peer's studies of the PatientID in the date range (as `dicom_node.qr.find_studies`: where the
    peer returns no IssuerOfPatientID the candidate carries the follow-up's, checked again when it is stored)."""
    started = utcnow()
    try:
        client = DICOMwebClient(peer.url, session=session_for(peer), timeout=peer.timeout_s)
        client.set_http_retry_params(retry=False)
        found = client.search_for_studies(
            search_filters={"PatientID": patient_id, "StudyDate": f"{earliest:%Y%m%d}-{latest:%Y%m%d}"},
            fields=["IssuerOfPatientID", "ModalitiesInStudy", "StudyDate"],
            get_remaining=True,
        )
        facts = [_facts(item, issuer) for item in found]
    except (requests.RequestException, SecretUnavailable, ValueError) as error:
        reason = _http_failure(error) if isinstance(error, requests.RequestException) else str(error)
        if audit is not None:
            audit(
                _audit_entry(
                    peer, peer.name, calling_ae_title, AuditKind.QUERY, AuditOutcome.FAILED, reason, at=started
                )
            )
        raise RetrieveError(f"QIDO-RS at {peer.name}: {reason}") from None
    if audit is not None:
        audit(
            _audit_entry(
                peer, peer.name, calling_ae_title, AuditKind.QUERY, AuditOutcome.COMPLETED,
                f"QIDO-RS: {len(facts)} study(ies)", at=started,
            )
        )  # fmt: skip
    logger.info("QIDO-RS at %s: %d study(ies) in %s..%s", peer.name, len(facts), earliest, latest)
    return [f for f in facts if f.study_instance_uid]


def retrieve_study(
    peer: DicomWebQueryRetrieveSettings,
    calling_ae_title: str,
    study_uid: str,
    store: InstanceStore,
    max_inflated_bytes: int,
    audit: Audit | None = None,
    on_stored: Callable[[str], None] | None = None,
) -> str:
    """WADO-RS of the whole study into this node's store, each instance checked and stored as by C-STORE; returns
    a summary. Raises RetrieveError when the request fails or not one instance could be stored."""
    started = utcnow()
    outcomes = []
    try:
        session = session_for(peer)
        with session.get(
            f"{peer.url}/studies/{study_uid}", headers={"Accept": ALL_SYNTAXES}, stream=True, timeout=peer.timeout_s
        ) as response:
            response.raise_for_status()
            kind, params = media_type(response.headers.get("Content-Type", ""))
            if kind != "multipart/related" or "boundary" not in params:
                raise BadMultipart(f"a {kind} response, not multipart/related with a boundary")
            with PartFiles(params["boundary"], store.layout.receiving) as parts:
                for chunk in response.iter_content(CHUNK):
                    parts.feed(chunk)
                for part in parts.finish():
                    outcomes.append(store_part(store, part, peer.name, max_inflated_bytes, study_uid))
    except (requests.RequestException, SecretUnavailable, BadMultipart, StorageError) as error:
        reason = _http_failure(error) if isinstance(error, requests.RequestException) else str(error)
        if audit is not None:
            audit(
                _audit_entry(
                    peer, peer.name, calling_ae_title, AuditKind.RETRIEVE, AuditOutcome.FAILED, reason, (study_uid,),
                    sum(o.stored for o in outcomes), started,
                )
            )  # fmt: skip
        raise RetrieveError(f"WADO-RS of study {study_uid} at {peer.name}: {reason}") from None
    stored = [o for o in outcomes if o.stored]
    refused = [o for o in outcomes if not o.stored]
    reasons = "; ".join(sorted({f"0x{o.status:04X} {o.reason}" for o in refused}))[:300]
    summary = f"WADO-RS: {len(stored)} stored, {len(refused)} refused" + (f" ({reasons})" if reasons else "")
    outcome = AuditOutcome.COMPLETED if not refused else AuditOutcome.PARTIAL if stored else AuditOutcome.FAILED
    if audit is not None:
        audit(
            _audit_entry(
                peer, peer.name, calling_ae_title, AuditKind.RETRIEVE, outcome, summary, (study_uid,), len(stored),
                started,
            )
        )  # fmt: skip
    if not stored:
        raise RetrieveError(f"WADO-RS of study {study_uid} at {peer.name}: nothing stored ({summary})")
    if on_stored is not None:
        on_stored(study_uid)
    logger.info("WADO-RS of study %s from %s: %s", study_uid, peer.name, summary)
    return summary
