"""Throwaway PKI for one local cluster: a CA, the API server's serving cert, the service-account key, and the client
certificate the API server presents to admission webhooks (with its own CA, as an admin would configure it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from alb_membership.gate.pki import make_ca, make_client, make_serving, pem_key

WEBHOOK_CLIENT_CA = "webhook-client-ca.crt"  # the CA a webhook verifies the API server's client certificate with


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
    write_admission(directory, days, now)


def write_admission(directory: Path, days: int, now: dt.datetime) -> None:
    """admission.yaml for --admission-control-config-file: the API server presents a client certificate (of a CA
    of its own, webhook-client-ca.crt) to every webhook that asks for one, as AdmissionConfiguration's
    kubeConfigFile lets a cluster admin configure. Webhooks that ask for none see no difference."""
    ca_cert, ca_key = make_ca("alb-membership-local-webhook-client-ca", days, now)
    cert, key = make_client(ca_cert, ca_key, "kube-apiserver-webhook-client", days, now)
    (directory / WEBHOOK_CLIENT_CA).write_bytes(ca_cert)
    (directory / "webhook-client.crt").write_bytes(cert)
    (directory / "webhook-client.key").write_bytes(key)
    (directory / "webhook-client.key").chmod(0o600)
    users = {
        "apiVersion": "v1",
        "kind": "Config",
        # "*": every webhook, whatever its host and port (the tests' webhooks listen on ports chosen per test).
        "users": [
            {
                "name": "*",
                "user": {
                    "client-certificate": str(directory / "webhook-client.crt"),
                    "client-key": str(directory / "webhook-client.key"),
                },
            }
        ],
    }
    (directory / "webhook-kubeconfig.yaml").write_text(yaml.safe_dump(users))
    webhook = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "WebhookAdmissionConfiguration",
        "kubeConfigFile": str(directory / "webhook-kubeconfig.yaml"),
    }
    admission = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [
            {"name": "ValidatingAdmissionWebhook", "configuration": webhook},
            {"name": "MutatingAdmissionWebhook", "configuration": webhook},
        ],
    }
    (directory / "admission.yaml").write_text(yaml.safe_dump(admission))
