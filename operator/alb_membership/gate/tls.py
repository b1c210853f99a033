"""The deletion gate's TLS and its path secret: a CA, a serving certificate and a random path token the operator
makes and keeps in one Secret, shared by its replicas; the CA and the token kept in step in the
ValidatingWebhookConfiguration (its caBundle, and its path: /validate-pod-deletion/<token>).

Why the operator and not cert-manager or the chart: cert-manager is one more thing to install and trust, and a
chart-made certificate is fixed at install (the plain manifests would ship one key to everyone). Here every
install has its own CA, made on first start; the serving certificate is renewed a month before it expires; both
replicas read the same Secret, and whichever starts first writes it (a conflict means the other did).

Why a path token (PRODUCT.md 3.14): the API server does not authenticate itself to a webhook unless the cluster's
admin configures it, which managed clusters (ACK) do not let users do. A random path that only the webhook
configuration and the Secret know is the secret the API server presents on every call; anything else that posts to
the port is refused (404). Where the admin does configure the API server's client certificate (AdmissionConfiguration
kubeConfigFile), ``client_ca`` makes the server require and verify it (mTLS); the replicas then present a client
certificate of the install's own CA to each other when a standby forwards a review to the leader.

The key never touches the filesystem (the root filesystem is read-only): Python's ssl reads the chain from an
anonymous in-memory file (memfd).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from alb_membership.gate.pki import make_ca, make_client, make_serving

log = logging.getLogger(__name__)

CA_NAME = "alb-membership-operator webhook CA"
REPLICA_NAME = "alb-membership-operator replica"  # the client certificate a standby forwards with, under mTLS
CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
REVIEW_PATH = "/validate-pod-deletion"  # + "/<token>": the only path the webhook answers on
TOKEN_KEY = "path-token"
PREVIOUS_TOKEN_KEY = "previous-path-token"
PREVIOUS_UNTIL_KEY = "previous-path-token-until"
# After a rotation, the token before it is heard this long too: the API server follows the configuration through
# its own watch, the other replica reads the Secret when it first hears the new token, and the leader writes the
# configuration within its next check (a minute); none of that may turn deletions away (404, ungated).
PREVIOUS_TOKEN_SECONDS = 300


def new_token() -> str:
    """256 random bits, URL-safe (43 characters of [A-Za-z0-9_-])."""
    return secrets.token_urlsafe(32)


def review_path(token: str) -> str:
    return f"{REVIEW_PATH}/{token}"


@dataclass(frozen=True)
class Bundle:
    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    path_token: str = ""  # empty in a Secret an older operator wrote: one is added
    # The token before the last rotation, heard too until ``previous_until``.
    previous_token: str = ""
    previous_until: dt.datetime | None = None

    def tokens(self, now: dt.datetime) -> list[str]:
        """The tokens a review may come with now: this one, and the previous one during its grace."""
        previous = self.previous_token and self.previous_until is not None and now < self.previous_until
        return [t for t in (self.path_token, self.previous_token if previous else "") if t]

    def to_secret_data(self) -> dict[str, str]:
        values = [
            ("ca.crt", self.ca_cert),
            ("ca.key", self.ca_key),
            ("tls.crt", self.cert),
            ("tls.key", self.key),
            (TOKEN_KEY, self.path_token.encode()),
        ]
        if self.previous_token and self.previous_until is not None:
            values.append((PREVIOUS_TOKEN_KEY, self.previous_token.encode()))
            values.append((PREVIOUS_UNTIL_KEY, self.previous_until.strftime("%Y-%m-%dT%H:%M:%SZ").encode()))
        return {name: base64.b64encode(value).decode() for name, value in values}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Bundle:
        """Raises KeyError or ValueError when the certificates cannot be read; a token that is not usable (not
        ASCII, too short, edited by hand) reads as none, and a new one is made: the CA is kept."""
        raw = {k: base64.b64decode(v) for k, v in data.items()}
        previous, until = _token(raw.get(PREVIOUS_TOKEN_KEY)), None
        with contextlib.suppress(ValueError):
            until = dt.datetime.strptime(
                raw.get(PREVIOUS_UNTIL_KEY, b"").decode("ascii", "replace"), "%Y-%m-%dT%H:%M:%SZ"
            )
            until = until.replace(tzinfo=dt.UTC)
        return cls(
            raw["ca.crt"],
            raw["ca.key"],
            raw["tls.crt"],
            raw["tls.key"],
            _token(raw.get(TOKEN_KEY)),
            previous if until is not None else "",
            until if previous else None,
        )


def _token(raw: bytes | None) -> str:
    token = (raw or b"").decode("ascii", errors="replace")
    return token if _usable(token) else ""


def _usable(token: str) -> bool:
    """A token long enough not to be guessed, and one that can stand in a URL path as it is."""
    return len(token) >= 32 and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)


def needs_renewal(bundle: Bundle, hosts: list[str], now: dt.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(bundle.cert)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return not set(hosts) <= covered


def server_context(bundle: Bundle, client_ca: bytes | None = None) -> ssl.SSLContext:
    """With ``client_ca`` (mTLS), a client must present a certificate of that CA (the API server's, as its
    AdmissionConfiguration gives it) or of this install's own (a replica forwarding to the leader)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.decode())
        context.load_verify_locations(cadata=bundle.ca_cert.decode())
    _load_chain(context, bundle.cert, bundle.key)
    return context


class ServerTLS:
    """The webhook server's TLS, which follows the Secret. The server is given one context, ``front``; every
    handshake is switched (its SNI callback, which OpenSSL calls on every ClientHello, with a server name or
    without) to the context built from the bundle current now. A renewed certificate, and under mTLS a new
    install CA, take effect for the next connection, and a CA replaced is no longer trusted: a context's trust
    store can only grow, so it is built again rather than added to. Failed handshakes (no client certificate or
    an untrusted one under mTLS, or no TLS at all) are counted with ``refused``."""

    def __init__(self, bundle: Bundle, client_ca: bytes | None, refused: Callable[[], None]) -> None:
        self._client_ca = client_ca
        self._bundle = bundle
        self._current = server_context(bundle, client_ca)
        self.front = server_context(bundle, client_ca)
        self.front.sni_callback = self._switch
        self.front.sslobject_class = _counting(refused)

    def use(self, bundle: Bundle) -> None:
        if (bundle.ca_cert, bundle.cert, bundle.key) != (self._bundle.ca_cert, self._bundle.cert, self._bundle.key):
            self._current = server_context(bundle, self._client_ca)
        self._bundle = bundle

    def _switch(self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._current


def _counting(refused: Callable[[], None]) -> type[ssl.SSLObject]:
    class Counting(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not done yet
            except ssl.SSLError:
                refused()
                raise

    return Counting


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    fd = os.memfd_create("albm-webhook-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert + key)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def client_context(bundle: Bundle, mtls: bool = False) -> ssl.SSLContext:
    """For a standby forwarding a review to the leader: trusts this install's CA only; under mTLS it presents a
    client certificate of that CA, made in memory (each replica has the CA's key from the Secret)."""
    context = ssl.create_default_context(cadata=bundle.ca_cert.decode())
    if mtls:
        cert, key = make_client(bundle.ca_cert, bundle.ca_key, REPLICA_NAME, SERVING_DAYS, dt.datetime.now(dt.UTC))
        _load_chain(context, cert, key)
    return context


class Certificates:
    """Makes, reads and renews the Secret; keeps the caBundle and the path of the webhook configuration in step."""

    def __init__(self, api: client.ApiClient, namespace: str, secret: str, hosts: list[str], configuration: str | None):
        self._core = client.CoreV1Api(api)
        self._admission = client.AdmissionregistrationV1Api(api)
        self._namespace = namespace
        self._secret = secret
        self._hosts = hosts
        self._configuration = configuration
        self.ca_bundle_written = configuration is None  # False until the configuration carries our CA and path
        self._used: Bundle | None = None  # what this replica last got from ensure: its token is the one it hears

    async def ensure(self) -> Bundle:
        """The Secret's bundle, made, completed or renewed as needed. Raises CertificateError, whose text never
        holds a token (the API server's error bodies echo what was sent)."""
        known: set[str] = set()
        try:
            bundle = await self._ensure(known)
        except ApiException as exc:
            raise CertificateError(f"{exc.status} {exc.reason}: {redact(str(exc.body or ''), known)}") from None
        self._used = bundle
        return bundle

    async def configure(self, bundle: Bundle) -> None:
        """The configuration's caBundle and path in step with ``bundle``: by the leader only, once it hears that
        bundle's token (the configuration must never name a token the leader does not hear)."""
        if not self._configuration:
            return
        try:
            await self._keep_configuration(bundle)
        except ApiException as exc:
            tokens = set(bundle.tokens(dt.datetime.now(dt.UTC)))
            raise CertificateError(f"{exc.status} {exc.reason}: {redact(str(exc.body or ''), tokens)}") from None

    async def _ensure(self, known: set[str]) -> Bundle:
        now = dt.datetime.now(dt.UTC)
        for _ in range(3):  # a conflict means another replica wrote it first: read again
            existing = await self._read()
            current = existing[0] if existing else None
            known.update(current.tokens(now) if current is not None else ())
            renew = current is None or needs_renewal(current, self._hosts, now)
            if current is not None and current.path_token and not renew:
                return current
            if current is not None and not renew:
                bundle = self._rotated(current, now)  # the token's key deleted (a rotation), or a 0.1 Secret
            elif current is not None and current.path_token:
                cert, key = make_serving(current.ca_cert, current.ca_key, self._hosts, SERVING_DAYS, now)
                bundle = replace(current, cert=cert, key=key)
            else:
                ca_cert, ca_key = (current.ca_cert, current.ca_key) if current else make_ca(CA_NAME, CA_DAYS, now)
                cert, key = make_serving(ca_cert, ca_key, self._hosts, SERVING_DAYS, now)
                bundle = self._rotated(Bundle(ca_cert, ca_key, cert, key), now)
            known.update(bundle.tokens(now))
            if await self._write(bundle, existing[1] if existing else None):
                log.info("webhook certificate and path token written to Secret %s/%s", self._namespace, self._secret)
                return bundle
        raise RuntimeError(f"could not write the Secret {self._namespace}/{self._secret}")

    def _rotated(self, bundle: Bundle, now: dt.datetime) -> Bundle:
        """``bundle`` with a new token; the one this replica heard until now (if any) heard for a grace period
        more, so that neither the API server's nor the other replica's lag turns deletions away."""
        token = new_token()
        held = self._used.path_token if self._used is not None else ""
        if held and held != token:
            until = now.replace(microsecond=0) + dt.timedelta(seconds=PREVIOUS_TOKEN_SECONDS)
            return replace(bundle, path_token=token, previous_token=held, previous_until=until)
        return replace(bundle, path_token=token, previous_token="", previous_until=None)

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

    async def _keep_configuration(self, bundle: Bundle) -> None:
        assert self._configuration is not None
        try:
            config = await self._admission.read_validating_webhook_configuration(self._configuration)
        except ApiException as exc:
            if exc.status != 404:
                raise
            # Installed after the operator started (or removed): tried again soon, see Runtime.keep_certificates.
            log.warning(
                "ValidatingWebhookConfiguration %s not found; its caBundle and path are set once it exists",
                self._configuration,
            )
            self.ca_bundle_written = False
            return
        patch = configuration_patch(config.webhooks or [], bundle)
        if patch:
            # One JSON patch: the API server switches to the new path and CA together.
            await self._admission.patch_validating_webhook_configuration(self._configuration, patch)
            log.info("caBundle and path of ValidatingWebhookConfiguration %s updated", self._configuration)
        self.ca_bundle_written = True


class CertificateError(RuntimeError):
    """The Secret or the webhook configuration could not be read or written (the token left out of the text)."""


def redact(text: str, tokens: set[str]) -> str:
    for token in tokens:
        if token:
            text = text.replace(token, "<path-token>")
    return text


def configuration_patch(webhooks: list[Any], bundle: Bundle) -> list[dict[str, Any]]:
    """JSON patch operations that give every webhook of the configuration this install's CA and its path with the
    token, whether it calls a Service (``service.path``) or a URL (query dropped: the API server allows none).
    A prefix before the review path is kept (a proxy in front of the webhook, ``/albm/validate-pod-deletion``)."""
    ca = base64.b64encode(bundle.ca_cert).decode()
    patch: list[dict[str, Any]] = []
    for i, hook in enumerate(webhooks):
        config = hook.client_config
        if config.ca_bundle != ca:
            op = "replace" if config.ca_bundle else "add"
            patch.append({"op": op, "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca})
        if config.service is not None:
            path = _prefix(config.service.path) + review_path(bundle.path_token)
            if config.service.path != path:
                op = "replace" if config.service.path else "add"
                patch.append({"op": op, "path": f"/webhooks/{i}/clientConfig/service/path", "value": path})
        elif config.url:
            parts = urlsplit(config.url)
            url = urlunsplit((parts.scheme, parts.netloc, _prefix(parts.path) + review_path(bundle.path_token), "", ""))
            if url != config.url:
                patch.append({"op": "replace", "path": f"/webhooks/{i}/clientConfig/url", "value": url})
    return patch


def _prefix(path: str | None) -> str:
    """What stands before the review path in a configured path: all of it up to /validate-pod-deletion, or, if
    that is not there, the whole path (without a trailing slash)."""
    path = path or ""
    at = path.find(REVIEW_PATH)
    return (path[:at] if at >= 0 else path).rstrip("/")
