"""Domain errors of the models package."""


class ModelError(Exception):
    """A model cannot be trained, loaded or applied."""


class WeightsMismatch(ModelError):
    """The weights file's sha256 differs from the one its model card records: they are refused."""
