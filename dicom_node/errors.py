"""Domain errors at the DICOM receive edge; mapped to statuses in `dicom_node.status`."""


class ReceiveError(Exception):
    """A received object cannot be accepted."""


class UndecodableDataset(ReceiveError):
    """The bytes are not a decodable DICOM data set (not DICOM, truncated, corrupt encoding)."""


class DatasetInvalid(ReceiveError):
    """The data set decodes but cannot be stored: identifying attributes missing or invalid, pixel data short."""
