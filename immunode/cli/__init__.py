"""Command line of the node: serve, status, check-config, retry, process, import, train, evaluate.

One module a concern, each registering its own sub-commands: node (operations), imports, analysis (research
statistics), training, evaluation, reproduction; common holds what they share."""

from __future__ import annotations

import argparse
import sys

from common.version import __version__
from immunode.cli import analysis, evaluation, imports, node, reproduction, training
from immunode.cli.common import CommandParser, add_global_options, config_source
from immunode.config import ConfigError
from storage.errors import IndexMissing, IndexUnavailable

COMMAND_MODULES = (node, analysis, training, reproduction, evaluation, imports)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="immunode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"immunode {__version__}")
    add_global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except IndexMissing as error:
        hint = f"is --config pointing at the node's config? (config: {config_source(args)})"
        print(f"error: {error}; {hint}", file=sys.stderr)
        return 2
    except IndexUnavailable as error:
        print(f"error: {error} (config: {config_source(args)})", file=sys.stderr)
        return 2
