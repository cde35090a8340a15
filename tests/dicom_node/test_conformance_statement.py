"""docs/conformance.md says what the node negotiates: its Annex C lists exactly the storage SOP classes and
transfer syntaxes the SCP offers, in its order of preference; the implementation identifiers are those a peer
receives; a context is accepted with the first transfer syntax of the node's list that the requestor proposed;
association requests are rejected with the result, source and reason the statement gives."""

from __future__ import annotations

import re

from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from tests.conftest import REPO

STATEMENT = (REPO / "docs" / "conformance.md").read_text()


def _annex_table(heading: str) -> list[str]:
    """The UIDs of the table under `heading`, in order."""
    section = STATEMENT.split(heading, 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\|.*\| `([0-9.]+)` \|$", section, flags=re.MULTILINE)


def test_the_statement_lists_what_the_scp_offers() -> None:
    assert _annex_table("#### C.1 Transfer syntaxes") == TRANSFER_SYNTAXES
    assert sorted(_annex_table("#### C.2 Storage SOP classes")) == sorted(STORAGE_SOP_CLASSES.values())
    assert f"{len(STORAGE_SOP_CLASSES)} classes" in STATEMENT


def test_negotiation_as_the_statement_describes(make_settings, start_node) -> None:
    node = start_node(make_settings())
    ae = AE(ae_title="STORESCU")
    ae.requested_contexts = [
        build_context(CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian]),  # the node prefers uncompressed
        build_context(CTImageStorage, [JPEG2000Lossless, JPEGLSLossless]),  # compressed only: the node's order
        build_context("1.2.3.4.5.6", [ImplicitVRLittleEndian]),  # not a storage class: abstract syntax rejected
    ]
    assoc = ae.associate("127.0.0.1", node.port, ae_title="IMMUNODE")
    try:
        assert assoc.is_established
        implementation = (assoc.acceptor.implementation_class_uid, assoc.acceptor.implementation_version_name)
        assert f"| Implementation Class UID | `{implementation[0]}`" in STATEMENT
        assert f"| Implementation Version Name | `{implementation[1]}` |" in STATEMENT
        accepted = {cx.context_id: cx for cx in assoc.accepted_contexts}
        assert accepted[1].transfer_syntax[0] == ExplicitVRLittleEndian
        assert accepted[3].transfer_syntax[0] == JPEGLSLossless  # before JPEG 2000 in Annex C.1
        assert [cx.result for cx in assoc.rejected_contexts] == [0x03]
        assert assoc.acceptor.maximum_length == node.settings.node.max_pdu_bytes
    finally:
        assoc.release()
    stranger = AE(ae_title="NOT-ALLOWED")
    stranger.add_requested_context(Verification)
    refused = stranger.associate("127.0.0.1", node.port, ae_title="IMMUNODE")
    assert refused.is_rejected
    rejection = refused.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    assert "| calling AE title (and address) not allowed | 1 rejected-permanent | 1 service-user | 3" in STATEMENT
