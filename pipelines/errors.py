"""Domain errors of analysis and reporting; a job that raises one ends FAILED with the message as its reason."""


class PipelineError(Exception):
    """Base class: the analysis cannot produce a result for this input."""


class SeriesNotUsable(PipelineError):
    """The series cannot be assembled into a volume (missing slices, mixed geometry, unreadable file)."""


class SuvNotComputable(PipelineError):
    """The PET header lacks what SUV conversion needs (dose, times, weight, units)."""


class OutputInvalid(PipelineError):
    """A produced SEG or SR failed validation (dciodvfy or highdicom read-back); it is never sent."""


class NothingToAnalyse(PipelineError):
    """The study holds no series the pipeline can use."""


class ImportRejected(PipelineError):
    """An import file has rejected values; nothing of it was stored. `problems` lists every one."""

    def __init__(self, problems: list) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s); nothing imported:\n" + "\n".join(f"  {p}" for p in problems))


class BaselineNotRetrieved(PipelineError):
    """The query/retrieve peer could not be asked for, or could not send, a baseline (the reason follows)."""


class UnknownPipeline(PipelineError):
    """A job or routing rule names a pipeline the registry does not hold."""


class ConfigurationProblem(PipelineError):
    """A file a pipeline's configuration block names cannot be used (the key and the reason)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"{key}: {reason}")


class SignatureFileError(PipelineError):
    """The published delta-radiomics signature table cannot be read."""


class RegistryConflict(ValueError):
    """Two registrations claim the same thing (a name, Series Numbers, a record type or table): the registry is
    not made. Names both."""


class UndeclaredRecords(PipelineError):
    """A pipeline's result holds records of a type it does not declare (`Writes.records`): no table keeps them."""
