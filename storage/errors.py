"""Domain errors of the storage layer; `dicom_node.status` maps them to DICOM statuses."""


class StorageError(Exception):
    """Base class of storage failures."""


class OutOfResources(StorageError):
    """Disk full, below the configured free-space floor, or the file system refused the write."""


class IndexUnavailable(StorageError):
    """The SQL index could not commit (database down, locked beyond its timeout)."""


class IndexMissing(StorageError):
    """An index that must already exist does not: no database file, or a database without immunode's schema."""
class IndexOutage(IndexUnavailable):
    """The SQL index cannot be reached (server down or restarting, connection lost, locked beyond its timeout, its
    disk full): work that needs it waits and is retried; `Database.health` logs the outage once."""


class InvalidIdentifier(StorageError):
    """A received identifier (UID, patient ID) is not valid for its DICOM value representation."""


class IdentityMismatch(StorageError):
    """The instance contradicts the index: another patient than its study's, or a series (or SOP instance)
    indexed under another study. Refused and recorded, never merged."""

    def __init__(self, message: str, study_instance_uid: str, conflict: object) -> None:
        super().__init__(message)
        self.study_instance_uid = study_instance_uid
        self.conflict = conflict  # storage.identity.Conflict


class ClaimLost(StorageError):
    """A job is no longer held by the run that was running it (taken back by another node that judged the run
    dead, or handed back): that run's result is not recorded."""


class UndeclaredRecord(StorageError):
    """A job's result holds a record of a type its pipeline does not declare (`Writes.records`): no table keeps it."""
