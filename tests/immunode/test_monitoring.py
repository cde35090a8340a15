"""Monitoring served by a running node, tested with an HTTP client: Prometheus metrics with the names and labels
an administrator scrapes, liveness and readiness, the status page (studies, jobs, failures, dead letters with a
working retry action, refusals, the audit trail; every value escaped), and authentication off localhost."""

from __future__ import annotations

import base64
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from immunode.config import ConfigError, parse_settings
from immunode.monitoring import check_password, hash_password
from tests.conftest import free_port, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_study


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_health_and_the_status_page(tmp_path: Path, make_settings, start_node) -> None:
    dead_port = free_port()  # nothing listens: deliveries die
    settings = make_settings(
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": dead_port}],
        dispatch={"max_attempts": 1, "backoff_initial_s": 0.2, "backoff_max_s": 0.5, "timeout_s": 2},
    )
    node = start_node(settings)
    base = f"http://127.0.0.1:{node.monitoring_port}"
    assert _get(base + "/healthz") == (200, "ok\n")
    status, body = _get(base + "/readyz")
    assert status == 200 and '"ready": true' in body

    study = write_study(tmp_path / "scanner", shape_zyx=(16, 40, 40), lesions=DEFAULT_LESIONS[:1], patient_id="MON<1>")
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    bad = pydicom.dcmread(study.pet_files[0])
    bad.SeriesInstanceUID = "not..a..uid"
    bad.save_as(tmp_path / "bad.dcm")
    storescu(node.port, [tmp_path / "bad.dcm"])  # refused with a failure status

    def dead_letter() -> bool:
        samples = _samples(_get(base + "/metrics")[1])
        return samples.get(("immunode_dead_letters", ()), 0) >= 1

    wait_until(dead_letter, 120)
    samples = _samples(_get(base + "/metrics")[1])
    received = samples[("immunode_instances_received_total", (("calling_ae", "STORESCU"), ("status", "0x0000")))]
    assert received == len(study.pet_files)
    refused = [k for k in samples if k[0] == "immunode_instances_received_total" and ("status", "0x0000") not in k[1]]
    assert refused and samples[refused[0]] == 1
    assert samples[("immunode_received_bytes_total", ())] >= sum(p.stat().st_size for p in study.pet_files) * 0.9
    assert samples[("immunode_store_seconds_count", ())] == len(study.pet_files) + 1
    assert samples[("immunode_studies_completed_total", ())] == 1
    assert samples[("immunode_jobs", (("pipeline", "pet_quant"), ("state", "SUCCEEDED")))] == 1
    assert samples[("immunode_job_duration_seconds_count", (("pipeline", "pet_quant"),))] == 1
    assert samples[("immunode_deliveries", (("state", "DEAD"),))] >= 1
    assert samples[("immunode_queue_depth", ())] == 0
    assert samples[("immunode_storage_free_bytes", ())] > 0
    inbound = [k for k in samples if k[0] == "immunode_audit_records_total" and ("direction", "INBOUND") in k[1]]
    assert inbound

    status, page = _get(base + "/")
    assert status == 200 and "immunode status" in page and "http-equiv=refresh" in page
    assert study.study_uid in page and "pet_quant <span class='state SUCCEEDED'>SUCCEEDED</span>" in page
    assert "Research use only" in page and "retry</button>" in page
    # The retry action: from the page (same origin) it re-queues the dead letter; from elsewhere it is refused.
    delivery_id = page.split("/retry/delivery/")[1].split("'")[0]
    # DNS rebinding: a page of rebind.example whose name now resolves to this node; Host and Origin agree.
    rebound = f"rebind.example:{node.monitoring_port}"
    forged = urllib.request.Request(
        base + f"/retry/delivery/{delivery_id}",
        method="POST",
        data=b"",
        headers={"Host": rebound, "Origin": f"http://{rebound}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403
    assert f"/retry/delivery/{delivery_id}" in _get(base + "/")[1]  # still a dead letter
    forged = urllib.request.Request(base + f"/retry/delivery/{delivery_id}", method="POST", data=b"")
    forged.add_header("Origin", "http://evil.example")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403
    retry = urllib.request.Request(base + f"/retry/delivery/{delivery_id}", method="POST", data=b"")
    retry.add_header("Origin", base)
    with urllib.request.urlopen(retry, timeout=10) as response:
        assert response.status == 200  # redirected back to the page
    assert _get(base + "/nothing")[0] == 404

    assert "not..a..uid" in page or "refused" in page  # the refusal is on the page


def test_page_values_are_escaped(tmp_path: Path, make_settings, start_node) -> None:
    node = start_node(make_settings())
    base = f"http://127.0.0.1:{node.monitoring_port}"
    from storage.events import record_event

    with node.database.session() as session:
        record_event(session, "ERROR", "<script>alert(1)</script> refused", "1.2.3")
    page = _get(base + "/")[1]
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_rebound_name_or_another_origin_is_refused(tmp_path: Path, make_settings, start_node) -> None:
    """DNS rebinding: another site's name resolved to the node's address. Host and Origin both name it (as a
    browser sends them): the page, the metrics and the retry action are refused; so is any request carrying a
    foreign Origin. The node's own names (the address bound, localhost) are answered."""
    node = start_node(make_settings())
    port = node.monitoring_port
    base = f"http://127.0.0.1:{port}"
    rebound = {"Host": f"rebind.example:{port}", "Origin": f"http://rebind.example:{port}"}
    for path in ("/", "/metrics", "/readyz"):
        assert _get(base + path, rebound)[0] == 403
        assert _get(base + path, {"Host": f"rebind.example:{port}"})[0] == 403
        assert _get(base + path, {"Origin": "http://evil.example"})[0] == 403
        assert _get(base + path, {"Origin": "null"})[0] == 403
    retry = urllib.request.Request(base + "/retry/delivery/1", method="POST", data=b"", headers=rebound)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(retry, timeout=10)
    assert refused.value.code == 403
    for name in ("127.0.0.1", "localhost", "LOCALHOST"):
        assert _get(base + "/", {"Host": f"{name}:{port}"})[0] == 200
    assert _get(base + "/", {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})[0] == 200


def test_a_name_that_is_not_localhost_needs_authentication(tmp_path: Path, make_settings, start_node) -> None:
    """`monitoring.allowed_hosts` names the node by a name behind which it is reached (a proxy, a tunnel): that
    name is answered, with authentication only, and the settings refuse it without credentials."""
    with pytest.raises(ConfigError, match="allowed_hosts .*not localhost: set username and password_hash"):
        parse_settings({"monitoring": {"allowed_hosts": ["localhost", "node.example"]}})
    stored = hash_password("correct horse battery")
    node = start_node(
        make_settings(
            monitoring={"allowed_hosts": ["node.example", "127.0.0.1"], "username": "admin", "password_hash": stored}
        )
    )
    base = f"http://127.0.0.1:{node.monitoring_port}"
    named = {"Host": f"node.example:{node.monitoring_port}"}
    right = {"Authorization": "Basic " + base64.b64encode(b"admin:correct horse battery").decode()}
    assert _get(base + "/", named)[0] == 401
    assert _get(base + "/", {**named, **right})[0] == 200
    assert _get(base + "/", {"Host": f"localhost:{node.monitoring_port}", **right})[0] == 403  # not in the list
    assert _get(base + "/healthz", named)[0] == 200


def test_authentication_is_required_off_localhost(tmp_path: Path, make_settings, start_node) -> None:
    with pytest.raises(ConfigError, match="monitoring: .*not localhost: set username and password_hash"):
        parse_settings({"monitoring": {"host": "0.0.0.0"}})
    stored = hash_password("correct horse battery")
    assert check_password("correct horse battery", stored) and not check_password("wrong", stored)
    settings = make_settings(monitoring={"host": "127.0.0.1", "port": 0, "username": "admin", "password_hash": stored})
    node = start_node(settings)
    base = f"http://127.0.0.1:{node.monitoring_port}"
    assert _get(base + "/metrics")[0] == 401
    assert _get(base + "/")[0] == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    assert _get(base + "/", wrong)[0] == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"admin:correct horse battery").decode()}
    assert _get(base + "/", right)[0] == 200 and _get(base + "/metrics", right)[0] == 200
    assert _get(base + "/healthz")[0] == 200  # liveness stays open for the container's healthcheck


def test_the_status_page_renders_in_a_real_browser(tmp_path: Path, make_settings, start_node) -> None:
    """Headless Chromium (Debian package `chromium`, installed by the test set-up) loads the page and takes a
    screenshot: the page renders (not blank, its tables drawn)."""
    from PIL import Image

    node = start_node(make_settings())
    study = write_study(tmp_path / "scanner", shape_zyx=(16, 40, 40), lesions=DEFAULT_LESIONS[:1], patient_id="SHOT")
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: "class='state SUCCEEDED'" in _get(f"http://127.0.0.1:{node.monitoring_port}/")[1], 120)
    shot = tmp_path / "status.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", f"http://127.0.0.1:{node.monitoring_port}/")
    assert shot.exists(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 20  # text, table borders, the banner: not a blank page


def _scanner_studies(folder: Path) -> dict[str, list[Path]]:
    """Three small PET studies as a scanner sends them, with their study attributes (one hostile description and
    patient name, as the network may send)."""
    made = {}
    for patient, accession, day, description, name in [
        ("ACME-001", "A100", "20260112", "PET-CT whole body", "Doe^Jane"),
        ("ACME-002", "A200", "20260214", "<script>alert('d')</script> restaging", "<img src=x onerror=alert(1)>"),
        ("OTHER-3", "B300", "20260320", "PET-CT", "Roe^Richard"),
    ]:
        study = write_study(folder / patient, shape_zyx=(2, 16, 16), lesions=(), with_ct=False, patient_id=patient)
        for path in study.pet_files:
            ds = pydicom.dcmread(path)
            ds.AccessionNumber, ds.StudyDate, ds.StudyDescription, ds.PatientName = accession, day, description, name
            ds.save_as(path)
        made[patient] = list(study.pet_files)
    return made


def _list_settings(make_settings, **sections):
    # Only whole-slide images are analysed: these PET studies complete at once, with no job.
    rules = [{"name": "slides", "pipeline": "histology", "series": {"modality": "SM"}}]
    return make_settings(routing={"study_stable_s": 0.5, "poll_interval_s": 0.2, "rules": rules}, **sections)


def test_the_study_list_searched_filtered_and_paged(tmp_path: Path, make_settings, start_node) -> None:
    node = start_node(_list_settings(make_settings))
    base = f"http://127.0.0.1:{node.monitoring_port}"
    for files in _scanner_studies(tmp_path / "scanner").values():
        assert storescu(node.port, files).returncode == 0
    wait_until(lambda: "3 studies; page 1 of 1" in _get(base + "/?state=done")[1], 60)
    status, page = _get(base + "/")
    assert status == 200 and "class='health OK'>OK | index reachable | disk" in page
    for text in ("ACME-001", "A100", "2026-01-12", "PET-CT whole body", "ACME-002", "OTHER-3", "B300"):
        assert text in page, text
    assert "3 studies; page 1 of 1" in page
    assert "&lt;script&gt;alert(&#x27;d&#x27;)&lt;/script&gt; restaging" in page and "<script>" not in page
    assert "Doe^Jane" not in page and "onerror" not in page  # patient names are off by default
    patient = _get(base + "/?patient=acme-00")[1]
    assert "ACME-001" in patient and "ACME-002" in patient and "OTHER-3" not in patient
    dated = _get(base + "/?from=2026-02-01&to=2026-02-28")[1]
    assert "ACME-002" in dated and "ACME-001" not in dated and "OTHER-3" not in dated
    assert "1 study; page 1 of 1" in _get(base + "/?accession=b3")[1]
    assert "no study matches" in _get(base + "/?state=receiving")[1]
    first = _get(base + "/?size=2")[1]
    assert "3 studies; page 1 of 2" in first and "OTHER-3" in first and "ACME-001" not in first  # newest first
    older = first.split("href='/?")[1].split("'")[0].replace("&amp;", "&")
    second = _get(base + "/?" + older)[1]
    assert "page 2 of 2" in second and "ACME-001" in second and "OTHER-3" not in second
    refused = _get(base + "/?from=%3Cb%3E&state=nonsense")[1]
    assert "from: not a date (YYYY-MM-DD): &#x27;&lt;b&gt;&#x27;" in refused and "state: one of receiving" in refused
    assert "3 studies" in refused  # the values that do not parse are left out, the list stays


def test_patient_names_only_when_the_configuration_allows(tmp_path: Path, make_settings, start_node) -> None:
    node = start_node(_list_settings(make_settings, monitoring={"port": 0, "show_patient_names": True}))
    base = f"http://127.0.0.1:{node.monitoring_port}"
    for files in _scanner_studies(tmp_path / "scanner").values():
        assert storescu(node.port, files).returncode == 0
    wait_until(lambda: "3 studies; page 1 of 1" in _get(base + "/?state=done")[1], 60)
    page = _get(base + "/")[1]
    assert "<th>patient name</th>" in page and "Doe^Jane" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --with-postgres installs it)")
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_study_list_in_a_real_browser(tmp_path: Path, make_settings, start_node) -> None:
    """Headless Chromium reads the filtered study list as a browser parses it (the hostile description stays text,
    no element comes from the data) and takes a screenshot of it."""
    from PIL import Image

    node = start_node(_list_settings(make_settings))
    base = f"http://127.0.0.1:{node.monitoring_port}"
    for files in _scanner_studies(tmp_path / "scanner").values():
        assert storescu(node.port, files).returncode == 0
    wait_until(lambda: "3 studies; page 1 of 1" in _get(base + "/?state=done")[1], 60)
    filtered = f"{base}/?patient=ACME&state=done"
    dom = _chromium(tmp_path, "--dump-dom", filtered).stdout
    assert "2 studies; page 1 of 1" in dom and "ACME-001" in dom and "ACME-002" in dom and "OTHER-3" not in dom
    assert "&lt;script&gt;alert('d')&lt;/script&gt; restaging" in dom  # text, as the browser holds it
    assert dom.count("<script") == 0 and "<img" not in dom
    assert 'value="ACME"' in dom  # the search form keeps what was asked
    shot = tmp_path / "study-list.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", filtered)
    assert shot.exists(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 900) and len(image.getcolors(maxcolors=1 << 20) or []) > 20
