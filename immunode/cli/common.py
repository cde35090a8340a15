"""What the command modules share: the global options, the settings, a session on the index, problems printed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from immunode.config import Settings, load_settings

if TYPE_CHECKING:
    from storage.database import Database

DEFAULT_CONFIG_ENV = "IMMUNODE_CONFIG"


def add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options every command takes, before or after its name (the sub-commands' default is SUPPRESS, so a
    value given before the sub-command is kept)."""
    parser.add_argument(
        "--config", "-c", default=default, help=f"config file (default: ${DEFAULT_CONFIG_ENV} or embedded defaults)"
    )


class CommandParser(argparse.ArgumentParser):
    """The parser of a sub-command (and of theirs: argparse gives nested sub-parsers their parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_global_options(self, argparse.SUPPRESS)


def config_path(args: argparse.Namespace) -> Path | None:
    if getattr(args, "config", None):
        return Path(args.config)
    if os.environ.get(DEFAULT_CONFIG_ENV):
        return Path(os.environ[DEFAULT_CONFIG_ENV])
    return None


def config_source(args: argparse.Namespace) -> str:
    """Where the settings came from, as an administrator would name it."""
    path = config_path(args)
    if path is None:
        return f"embedded defaults (no --config, no ${DEFAULT_CONFIG_ENV})"
    return str(path) if getattr(args, "config", None) else f"{path} (from ${DEFAULT_CONFIG_ENV})"


def settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args))


@contextmanager
def index_database(args: argparse.Namespace, create: bool = False) -> Iterator[Database]:
    """The configured index. Only the commands that bring data in create (and migrate) one; the others refuse an
    index that does not exist (storage.errors.IndexMissing, reported by `main`)."""
    from storage.database import Database

    configured = settings(args)
    database = Database(configured.database_url, create=create, migrations=configured.registry.migrations)
    try:
        yield database
    finally:
        database.dispose()


@contextmanager
def index_session(args: argparse.Namespace, create: bool = False) -> Iterator[Session]:
    """A session on the configured index (`index_database`)."""
    with index_database(args, create) as database, database.session() as session:
        yield session


def print_problems(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def card_arguments(parser: argparse.ArgumentParser, name: str | None = None) -> None:
    """What a training command writes into the model card of its weights."""
    if name is not None:
        parser.add_argument("--name", default=name)
        parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--training-data", default="", help="description of the cohort for the model card")
    parser.add_argument("--synthetic", action="store_true", help="label the weights as trained on synthetic data")
