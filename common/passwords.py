"""Password hashes of the node's HTTP services (status page, DICOMweb clients): PBKDF2-SHA256, salted, in the
text form `pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>` that `immunode hash-password` prints."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PASSWORD_HASH_PATTERN = r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]{64}$"


def hash_password(password: str, iterations: int = 200_000) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def check_password(password: str, stored: str) -> bool:
    _, iterations, salt, digest = stored.split("$")
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations)).hex()
    return hmac.compare_digest(computed, digest)
