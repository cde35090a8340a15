"""The base of every configuration block: unknown keys are errors (each layer's blocks derive from it and the
node composes them into one model, `immunode.config.Settings`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def valid_regex(value: str) -> str:
    """A configured regular expression that compiles (pydantic reports the key when it does not)."""
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"invalid regular expression: {error}") from None
    return value
