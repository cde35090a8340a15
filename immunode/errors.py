"""Errors of the wiring above the layers (configuration errors are `immunode.config.ConfigError`)."""


class EngineUnavailable(Exception):
    """The engine jobs run on cannot be reached (the Dask scheduler): jobs stay queued, the reason shown by status."""
