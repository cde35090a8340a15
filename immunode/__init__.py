"""immunode: a DICOM node computing research imaging biomarkers of immunotherapy response.

This package holds what ties the stage packages together: the configuration model, the command line
and the service that runs the SCP, the scheduler, the worker pool and the dispatcher side by side.
"""

__version__ = "0.1.0"
