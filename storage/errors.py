"""Domain errors of the storage layer; `dicom_node.status` maps them to DICOM statuses."""


class StorageError(Exception):
    """Base class of storage failures."""


class OutOfResources(StorageError):
    """Disk full, below the configured free-space floor, or the file system refused the write."""


class IndexUnavailable(StorageError):
    """The SQL index could not commit (database down, locked beyond its timeout)."""


class IndexMissing(StorageError):
    """An index that must already exist does not: no database file, or a database without immunode's schema."""


class InvalidIdentifier(StorageError):
    """A received identifier (UID, patient ID) is not valid for its DICOM value representation."""


class IdentityMismatch(StorageError):
    """The instance contradicts the index: another patient than its study's, or a series (or SOP instance)
    indexed under another study. Refused and recorded, never merged."""

    def __init__(self, message: str, study_instance_uid: str, conflict: object) -> None:
        super().__init__(message)
        self.study_instance_uid = study_instance_uid
        self.conflict = conflict  # storage.store.Conflict
