"""The vocabulary every layer shares: the typed hand-offs that cross from storage to the pipelines and back
(study facts, baselines, patient data, result records, output files), the job and pairing states, the
configuration base model and the product version. Imports nothing of this project; every package may
import it (as mercure's `common`)."""

from common.version import __version__

__all__ = ["__version__"]
