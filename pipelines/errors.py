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
