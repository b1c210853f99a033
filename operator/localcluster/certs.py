"""Throwaway PKI for one local cluster: a CA, the API server's serving cert, the service-account key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from alb_membership.gate.pki import make_ca, make_serving, pem_key


def write_pki(directory: Path, days: int = 7) -> None:
    """Writes ca.crt, server.crt/key (127.0.0.1, localhost, kubernetes.default.svc) and sa.key into ``directory``."""
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = make_ca("alb-membership-local-ca", days, now)
    cert, key = make_serving(ca_cert, ca_key, ["localhost", "kubernetes.default.svc", "127.0.0.1"], days, now)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca_cert)
    (directory / "server.crt").write_bytes(cert)
    # Service-account tokens are RS256 by default; the same key signs and verifies.
    for name, pem in (("server.key", key), ("sa.key", pem_key(rsa.generate_private_key(65537, 2048)))):
        (directory / name).write_bytes(pem)
        (directory / name).chmod(0o600)
