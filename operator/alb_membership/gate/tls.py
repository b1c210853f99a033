"""The deletion gate's TLS: a CA and a serving certificate the operator makes and keeps in one Secret, shared by its
replicas, and the CA kept in step in the ValidatingWebhookConfiguration's caBundle.

Why the operator and not cert-manager or the chart: cert-manager is one more thing to install and trust, and a
chart-made certificate is fixed at install (the plain manifests would ship one key to everyone). Here every
install has its own CA, made on first start; the serving certificate is renewed a month before it expires; both
replicas read the same Secret, and whichever starts first writes it (a conflict means the other did).

The key never touches the filesystem (the root filesystem is read-only): Python's ssl reads the chain from an
anonymous in-memory file (memfd).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from alb_membership.gate.pki import make_ca, make_serving

log = logging.getLogger(__name__)

CA_NAME = "alb-membership-operator webhook CA"
CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Bundle:
    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def to_secret_data(self) -> dict[str, str]:
        return {
            name: base64.b64encode(value).decode()
            for name, value in (
                ("ca.crt", self.ca_cert),
                ("ca.key", self.ca_key),
                ("tls.crt", self.cert),
                ("tls.key", self.key),
            )
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Bundle:
        raw = {k: base64.b64decode(v) for k, v in data.items()}
        return cls(raw["ca.crt"], raw["ca.key"], raw["tls.crt"], raw["tls.key"])


def needs_renewal(bundle: Bundle, hosts: list[str], now: dt.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(bundle.cert)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return not set(hosts) <= covered


def server_context(bundle: Bundle) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load(context, bundle)
    return context


def load(context: ssl.SSLContext, bundle: Bundle) -> None:
    """Into a live context too: connections made after a renewal get the new certificate."""
    fd = os.memfd_create("albm-webhook-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, bundle.cert + bundle.key)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def client_context(bundle: Bundle) -> ssl.SSLContext:
    """For a standby forwarding a review to the leader: trusts this install's CA only."""
    return ssl.create_default_context(cadata=bundle.ca_cert.decode())


class Certificates:
    """Makes, reads and renews the Secret; keeps the caBundle of the webhook configuration in step."""

    def __init__(self, api: client.ApiClient, namespace: str, secret: str, hosts: list[str], configuration: str | None):
        self._core = client.CoreV1Api(api)
        self._admission = client.AdmissionregistrationV1Api(api)
        self._namespace = namespace
        self._secret = secret
        self._hosts = hosts
        self._configuration = configuration
        self.ca_bundle_written = configuration is None  # False until the configuration carries our CA

    async def ensure(self) -> Bundle:
        now = dt.datetime.now(dt.UTC)
        for _ in range(3):  # a conflict means another replica wrote it first: read again
            existing = await self._read()
            current = existing[0] if existing else None
            if current is not None and not needs_renewal(current, self._hosts, now):
                bundle = current
                break
            ca_cert, ca_key = (current.ca_cert, current.ca_key) if current else make_ca(CA_NAME, CA_DAYS, now)
            cert, key = make_serving(ca_cert, ca_key, self._hosts, SERVING_DAYS, now)
            bundle = Bundle(ca_cert, ca_key, cert, key)
            if await self._write(bundle, existing[1] if existing else None):
                log.info("webhook certificate written to Secret %s/%s", self._namespace, self._secret)
                break
        else:
            raise RuntimeError(f"could not write the Secret {self._namespace}/{self._secret}")
        if self._configuration:
            await self._keep_ca_bundle(bundle)
        return bundle

    async def _read(self) -> tuple[Bundle | None, str] | None:
        try:
            secret = await self._core.read_namespaced_secret(self._secret, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return Bundle.from_secret_data(secret.data or {}), secret.metadata.resource_version
        except (KeyError, ValueError):
            log.warning("Secret %s/%s holds no usable certificate; replacing it", self._namespace, self._secret)
            return None, secret.metadata.resource_version

    async def _write(self, bundle: Bundle, version: str | None) -> bool:
        body: Any = {
            "metadata": {"name": self._secret, "namespace": self._namespace, "resourceVersion": version},
            "type": "Opaque",
            "data": bundle.to_secret_data(),
        }
        try:
            if version is None:
                await self._core.create_namespaced_secret(self._namespace, body)
            else:
                await self._core.replace_namespaced_secret(self._secret, self._namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def _keep_ca_bundle(self, bundle: Bundle) -> None:
        assert self._configuration is not None
        try:
            config = await self._admission.read_validating_webhook_configuration(self._configuration)
        except ApiException as exc:
            if exc.status != 404:
                raise
            # Installed after the operator started (or removed): tried again soon, see Runtime.keep_certificates.
            log.warning(
                "ValidatingWebhookConfiguration %s not found; its caBundle is set once it exists", self._configuration
            )
            self.ca_bundle_written = False
            return
        ca = base64.b64encode(bundle.ca_cert).decode()
        patch = [
            {
                "op": "replace" if hook.client_config.ca_bundle else "add",
                "path": f"/webhooks/{i}/clientConfig/caBundle",
                "value": ca,
            }
            for i, hook in enumerate(config.webhooks or [])
            if hook.client_config.ca_bundle != ca
        ]
        if patch:
            await self._admission.patch_validating_webhook_configuration(self._configuration, patch)
            log.info("caBundle of ValidatingWebhookConfiguration %s updated", self._configuration)
        self.ca_bundle_written = True
