"""Configuration: the shipped file, the embedded defaults and errors that name their key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from immunode.cli import main as cli_main
from immunode.config import ConfigError, Settings, load_settings
from tests.conftest import REPO


def test_shipped_config_equals_the_embedded_defaults() -> None:
    assert load_settings(REPO / "config.yaml") == Settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:\n  prot: 104\n", "node.prot: unknown key"),
        ("node:\n  port: 70000\n", "node.port: Input should be less than or equal to 65535"),
        ("node:\n  ae_title: 'MUCH_TOO_LONG_AE_TITLE'\n", "node.ae_title"),
        ("peers:\n  allowed:\n    - ae_title: A\n      host: not-an-ip\n", "peers.allowed.0.host"),
        ("routing:\n  rules:\n    - name: r\n      pipeline: unknown\n", "routing.rules.0.pipeline"),
        (
            "routing:\n  rules:\n    - name: r\n      pipeline: pet_quant\n"
            "      series:\n        series_description: '('\n",
            "routing.rules.0.series.series_description",
        ),
        ("pipelines:\n  pet_quant:\n    background_inner_mm: 30\n", "pipelines.pet_quant"),
        (
            "destinations:\n  - {name: a, ae_title: A, host: h, port: 1}\n"
            "  - {name: a, ae_title: B, host: h, port: 2}\n",
            "destination names must be unique",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("node: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node:\n  port: 0\n  colour: blue\nstorage:\n  min_free_mb: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert "node.port" in message and "node.colour: unknown key" in message and "storage.min_free_mb" in message


def test_check_config_command(tmp_path: Path, capsys) -> None:
    assert cli_main(["check-config", str(REPO / "config.yaml"), "--skip-ports"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("dispatch:\n  max_attempts: 0\n")
    assert cli_main(["check-config", str(bad)]) == 2
    assert "dispatch.max_attempts" in capsys.readouterr().err


def test_serve_with_invalid_config_stops_with_message_not_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  ae_titel: X\n")
    completed = subprocess.run(
        [sys.executable, "-m", "immunode.cli", "--config", str(bad), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert "node.ae_titel: unknown key" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_node_refuses_to_start_with_weights_that_do_not_match_their_card(tmp_path: Path, make_settings) -> None:
    from immunode.service import Node
    from models.cards import card_path
    from models.serving import SHIPPED_CYTACT_WEIGHTS

    tampered = tmp_path / SHIPPED_CYTACT_WEIGHTS.name
    tampered.write_bytes(SHIPPED_CYTACT_WEIGHTS.read_bytes()[:-1])
    card_path(tampered).write_text(card_path(SHIPPED_CYTACT_WEIGHTS).read_text())
    settings = make_settings(pipelines={"pet_quant": {"cytact": {"weights": str(tampered)}}})
    with pytest.raises(ConfigError, match="pipelines.pet_quant.cytact.weights: .*refused"):
        Node(settings)
