"""Domain errors at the DICOM receive edge; mapped to statuses in `dicom_node.status`."""


class ReceiveError(Exception):
    """A received object cannot be accepted."""

    def __init__(self, message: str, study_instance_uid: str = "") -> None:
        super().__init__(message)
        # The study the refused object named, when it could be decoded and is a valid UID: the refusal
        # is then recorded with that study.
        self.study_instance_uid = study_instance_uid


class UndecodableDataset(ReceiveError):
    """The bytes are not a decodable DICOM data set (not DICOM, truncated, corrupt encoding)."""


class DatasetInvalid(ReceiveError):
    """The data set decodes but cannot be stored: identifying attributes missing or invalid, a SOP class other
    than the request's, image attributes or pixel data that do not fit each other."""


class DatasetTooLarge(ReceiveError):
    """A deflated data set that inflates beyond the configured limit (a deflate bomb, or simply too big)."""


class RetrieveError(Exception):
    """A query (C-FIND) or retrieval (C-MOVE) at the query/retrieve peer failed; the message says how."""


class TlsSetupError(Exception):
    """A configured TLS certificate, key or CA file cannot be used; start-up stops naming the key."""


class BadMultipart(Exception):
    """An HTTP body that should be multipart/related is not (no boundary, broken framing, cut short)."""


class SecretUnavailable(Exception):
    """A configured secret (token, password) cannot be read from its file or environment variable; the message
    names where it was looked for, never the secret."""
