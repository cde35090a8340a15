"""Start-up checks: everything `immunode serve` verifies before it listens, in the one function that
`immunode check-config` runs too, so that a configuration check-config accepts is one serve accepts.

Problems (serve refuses to start; each names its key and file):
- the pipelines' files: weights against their model cards, tables (`Pipeline.check_configuration`);
- TLS: `node.tls` certificate, key and CA; each destination's and the query/retrieve peer's client files (for
  DICOMweb services also their secrets); the STOW-RS endpoint's (`node.dicomweb.tls`);
- the storage root and `logging.file`: folders that exist (or can be made) and can be written;
- the ports: `node.port` (plain DICOM), `node.tls.port`, `node.dicomweb.port` and `monitoring.port` can be bound
  on their hosts;
- the database: reachable, and its schema no newer than this version knows.
Warnings (serve starts, and logs them): free disk below the reserve; an allow-list no sender outside can match
(only loopback addresses); a retention age shorter than a longitudinal pipeline's pairing window.
Notes: what each pipeline reads and writes (`Reads`, `Writes`), which weights are used (name, version,
hash), what start-up will do to the index.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from dicom_node.dicomweb import check_service
from dicom_node.errors import SecretUnavailable, TlsSetupError
from dicom_node.settings import DicomWebService
from dicom_node.tls import client_context, server_context
from immunode.config import ConfigError, Settings
from pipelines.errors import ConfigurationProblem
from storage.database import head_revisions, indexed_revisions, known_revision, pending_heads, sqlite_file
from storage.errors import IndexUnavailable

MB = 1024 * 1024


@dataclass(frozen=True)
class StartupCheck:
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    problems: tuple[str, ...]
    tls_context: ssl.SSLContext | None  # the SCP's, when `node.tls` is set and usable
    dicomweb_tls_context: ssl.SSLContext | None = None  # the STOW-RS endpoint's, when `node.dicomweb.tls` is set

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(
                f"{len(self.problems)} start-up problem(s):\n" + "\n".join(f"  {p}" for p in self.problems)
            )


def check_startup(settings: Settings, ports: bool = True) -> StartupCheck:
    """Run every start-up check; `ports=False` leaves out the port bindings (a node started on ports chosen at
    run time, or a configuration checked while the node runs on its ports)."""
    notes: list[str] = []
    warnings: list[str] = []
    problems: list[str] = []
    _pipelines(settings, notes, problems)
    tls_context = _tls(settings, problems)
    dicomweb_tls_context = _dicomweb_endpoint_tls(settings, problems)
    _folders(settings, warnings, problems)
    if ports:
        _ports(settings, problems)
    _database(settings, notes, problems)
    _peers(settings, warnings)
    _retention(settings, warnings)
    return StartupCheck(tuple(notes), tuple(warnings), tuple(problems), tls_context, dicomweb_tls_context)


def _pipelines(settings: Settings, notes: list[str], problems: list[str]) -> None:
    """What each pipeline reads and writes; hashes and tables only (no PyTorch in the node's own process); the
    workers load the weights."""
    for pipeline in settings.registry.pipelines:
        notes.append(f"pipeline {pipeline.name}: " + "; ".join(pipeline.reads.lines() + pipeline.writes.lines()))
        try:
            notes.extend(pipeline.check_configuration(settings.pipelines))
        except ConfigurationProblem as error:
            problems.append(str(error))


def _tls(settings: Settings, problems: list[str]) -> ssl.SSLContext | None:
    peers: list[tuple[str, object]] = [(f"destinations.{n}", d) for n, d in enumerate(settings.destinations)]
    if settings.query_retrieve is not None:
        peers.append(("query_retrieve", settings.query_retrieve))
    for key, peer in peers:
        if isinstance(peer, DicomWebService):
            try:
                check_service(peer)
            except TlsSetupError as error:
                problems.append(f"{key}.tls.{error}")
            except SecretUnavailable as error:
                problems.append(f"{key}.auth: {error}")
        elif peer.tls is not None:  # type: ignore[attr-defined]
            try:
                client_context(peer.tls)  # type: ignore[attr-defined]
            except TlsSetupError as error:
                problems.append(f"{key}.tls.{error}")
    if settings.node.tls is None:
        return None
    try:
        return server_context(settings.node.tls)
    except TlsSetupError as error:
        problems.append(f"node.tls.{error}")
        return None


def _dicomweb_endpoint_tls(settings: Settings, problems: list[str]) -> ssl.SSLContext | None:
    if settings.node.dicomweb is None or settings.node.dicomweb.tls is None:
        return None
    try:
        return server_context(settings.node.dicomweb.tls)
    except TlsSetupError as error:
        problems.append(f"node.dicomweb.tls.{error}")
        return None


def _writable_folder(key: str, folder: Path) -> str | None:
    """None when `folder` is (or can be made) a folder this process writes in, else the problem."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == folder else f" (to make {folder})"
        return f"{key}: {existing} is not writable by this user{made}"
    return None


def _folders(settings: Settings, warnings: list[str], problems: list[str]) -> None:
    root = settings.storage.root.resolve()
    problem = _writable_folder("storage.root", root)
    if problem:
        problems.append(problem)
    elif root.exists():
        free = shutil.disk_usage(root).free
        if free < settings.storage.min_free_mb * MB:
            warnings.append(
                f"storage.root: {free // MB} MB free under {root}, below storage.min_free_mb "
                f"({settings.storage.min_free_mb}): every store is refused until space is freed"
            )
    if settings.logging.file is not None:
        problem = _writable_folder("logging.file", settings.logging.file.resolve().parent)
        if problem:
            problems.append(problem)


def _bind_problem(key: str, host: str, port: int) -> str | None:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        return f"{key}: cannot listen on {host}:{port}: {error.strerror}"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as error:
            hint = ""
            if error.errno == errno.EADDRINUSE:
                hint = " (is a node already running?)"
            elif error.errno == errno.EACCES and port < 1024:
                hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            return f"{key}: cannot listen on {host}:{port}: {error.strerror}{hint}"
    return None


def _ports(settings: Settings, problems: list[str]) -> None:
    node = settings.node
    wanted = []
    if node.plain:
        wanted.append(("node.port", node.host, node.port))
    if node.tls is not None:
        wanted.append(("node.tls.port", node.host, node.tls.port))
    if node.dicomweb is not None and node.dicomweb.port:
        wanted.append(("node.dicomweb.port", node.dicomweb.host, node.dicomweb.port))
    if settings.monitoring.enabled and settings.monitoring.port:
        wanted.append(("monitoring.port", settings.monitoring.host, settings.monitoring.port))
    for key, host, port in wanted:
        problem = _bind_problem(key, host, port)
        if problem:
            problems.append(problem)


def _database(settings: Settings, notes: list[str], problems: list[str]) -> None:
    url = settings.database_url
    key = "database.url" if settings.database.url else "database.url (null: SQLite under storage.root)"
    try:
        found = indexed_revisions(url)
    except IndexUnavailable as error:
        problems.append(f"{key}: {error}")
        return
    migrations = settings.registry.migrations
    heads = head_revisions(migrations)
    head = " + ".join(heads)
    file = sqlite_file(url)
    if found is None:
        notes.append(f"index: none yet at {file or 'the database'}; start-up creates it (schema {head})")
    elif unknown := [revision for revision in found if not known_revision(revision, migrations)]:
        problems.append(
            f"{key}: the index has schema {', '.join(unknown)}, unknown to this version (newest {head}): upgrade "
            "immunode, or register the pipeline whose migrations made it"
        )
    elif not pending_heads(found, migrations):
        notes.append(f"index: schema {head}, current")
    else:
        notes.append(f"index: schema {' + '.join(found)}; start-up migrates it to {head}")


def _peers(settings: Settings, warnings: list[str]) -> None:
    peers = settings.peers
    if peers.accept_any:
        return
    if not peers.allowed:
        warnings.append("peers.allowed is empty and peers.accept_any is false: every association is rejected")
        return
    hosts = [p.host for p in peers.allowed]
    if all(h is not None and ipaddress.ip_network(h, strict=False).is_loopback for h in hosts):
        where = " (this runs in a container: its loopback is the container's own)" if _in_container() else ""
        warnings.append(
            f"peers.allowed: only loopback addresses ({', '.join(sorted(set(hosts)))}): only senders on this "
            f"machine can store{where}; list your scanners' and PACS' AE titles and addresses"
        )


def _in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def _retention(settings: Settings, warnings: list[str]) -> None:
    max_age = settings.storage.retention.max_age_days
    if max_age is None:
        return
    for pipeline in settings.registry.pipelines:
        if not pipeline.longitudinal:
            continue
        window_days = pipeline.pairing_settings(settings.pipelines).window_max_weeks * 7
        if max_age < window_days:
            retrieve = (
                "retrieved again from query_retrieve" if settings.query_retrieve else "not found (no query_retrieve)"
            )
            warnings.append(
                f"storage.retention.max_age_days ({max_age:g}) is shorter than the {pipeline.name} pairing window "
                f"({window_days:g} days): baselines are purged before their follow-ups arrive, and are {retrieve}"
            )
