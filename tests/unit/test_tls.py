"""The gate's TLS Secret and webhook configuration (issue 17): a path token kept with the certificates and written into
the configuration with the caBundle; under mTLS only the API server's CA and the install's own replicas get in."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import ssl
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from alb_membership.gate.pki import make_ca, make_client, make_serving
from alb_membership.gate.tls import (
    PREVIOUS_TOKEN_SECONDS,
    Bundle,
    CertificateError,
    Certificates,
    ServerTLS,
    client_context,
    configuration_patch,
    new_token,
    review_path,
    server_context,
)

NOW = dt.datetime.now(dt.UTC)


def bundle(token: str = "") -> Bundle:
    ca_cert, ca_key = make_ca("install CA", 1, NOW)
    cert, key = make_serving(ca_cert, ca_key, ["127.0.0.1"], 1, NOW)
    return Bundle(ca_cert, ca_key, cert, key, token or new_token())


def hook(ca: str | None = None, path: str | None = None, url: str | None = None) -> Any:
    service = SimpleNamespace(path=path) if url is None else None
    return SimpleNamespace(client_config=SimpleNamespace(ca_bundle=ca, service=service, url=url))


def test_the_token_lives_in_the_secret_and_an_old_secret_gets_one() -> None:
    b = bundle()
    assert Bundle.from_secret_data(b.to_secret_data()) == b
    old = {k: v for k, v in b.to_secret_data().items() if k != "path-token"}
    assert Bundle.from_secret_data(old).path_token == "", "written by an operator before issue 17: one is added"
    short = {**old, "path-token": "c2hvcnQ="}  # "short": guessable, so not used
    assert Bundle.from_secret_data(short).path_token == ""
    assert len(new_token()) >= 43 and new_token() != new_token()


def test_the_configuration_gets_the_ca_and_the_path_with_the_token() -> None:
    b = bundle()
    path = review_path(b.path_token)
    patch = configuration_patch([hook(path="/validate-pod-deletion"), hook(url="https://10.0.0.1:9443/x?y=1")], b)
    ops = {op["path"]: (op["op"], op["value"]) for op in patch}
    assert ops["/webhooks/0/clientConfig/service/path"] == ("replace", path)
    assert ops["/webhooks/1/clientConfig/url"] == ("replace", f"https://10.0.0.1:9443/x{path}"), "its prefix kept"
    assert ops["/webhooks/0/clientConfig/caBundle"][0] == "add"
    assert configuration_patch([hook(path=None)], b)[1] == {
        "op": "add",
        "path": "/webhooks/0/clientConfig/service/path",
        "value": path,
    }, "the chart renders no path: the operator adds it"
    behind_a_proxy = [
        hook(path="/albm/validate-pod-deletion/" + new_token()),
        hook(url="https://proxy.example:8443/albm/validate-pod-deletion"),
        hook(url="https://10.0.0.1:9443/"),
    ]
    ops = {
        op["path"]: op["value"] for op in configuration_patch(behind_a_proxy, b) if not op["path"].endswith("caBundle")
    }
    assert ops == {
        "/webhooks/0/clientConfig/service/path": f"/albm{path}",
        "/webhooks/1/clientConfig/url": f"https://proxy.example:8443/albm{path}",
        "/webhooks/2/clientConfig/url": f"https://10.0.0.1:9443{path}",
    }
    ops = {op["path"]: (op["op"], op["value"]) for op in patch}
    ca = next(v for p, (_, v) in ops.items() if p.endswith("caBundle"))
    assert configuration_patch([hook(ca=ca, path=path), hook(ca=ca, url=f"https://h:1{path}")], b) == [], "in step"


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """Whether a client with ``client`` gets an answer from a server with ``server``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)
            writer.write(b"y")
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listening.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
        writer.write(b"x")
        await writer.drain()
        answered = await asyncio.wait_for(reader.read(1), 5) == b"y"
        writer.close()
        return answered
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        listening.close()
        await listening.wait_closed()


@pytest.mark.parametrize("client", ["api-server", "replica", "none", "other-ca"])
async def test_under_mtls_only_the_api_servers_ca_and_the_replicas_get_in(client: str) -> None:
    b = bundle()
    api_ca, api_ca_key = make_ca("API server's webhook client CA", 1, NOW)
    server = server_context(b, client_ca=api_ca)
    if client == "replica":
        context = client_context(b, mtls=True)
    else:
        context = ssl.create_default_context(cadata=b.ca_cert.decode())
        issuer = {"api-server": (api_ca, api_ca_key), "other-ca": make_ca("someone else", 1, NOW)}.get(client)
        if issuer is not None:
            cert, key = make_client(*issuer, "kube-apiserver", 1, NOW)
            path = f"/proc/self/fd/{_memfd(cert + key)}"
            context.load_cert_chain(path)
    assert await handshake(server, context) == (client in ("api-server", "replica"))


async def test_without_a_client_ca_no_certificate_is_asked() -> None:
    b = bundle()
    assert await handshake(server_context(b), client_context(b))


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("test-cert")
    os.write(fd, data)
    return fd


class FakeApis:
    """The Secret and the webhook configuration as the API server keeps them, for Certificates."""

    def __init__(self, data: dict[str, str] | None, refuse_patch: bool = False) -> None:
        self.data = data
        self.refuse_patch = refuse_patch
        self.patches: list[Any] = []

    async def read_namespaced_secret(self, _name: str, _ns: str) -> Any:
        if self.data is None:
            raise ApiException(status=404)
        return SimpleNamespace(data=self.data, metadata=SimpleNamespace(resource_version="1"))

    async def replace_namespaced_secret(self, _name: str, _ns: str, body: Any) -> None:
        self.data = body["data"]

    async def create_namespaced_secret(self, _ns: str, body: Any) -> None:
        self.data = body["data"]

    async def read_validating_webhook_configuration(self, _name: str) -> Any:
        return SimpleNamespace(webhooks=[hook(path="/validate-pod-deletion")])

    async def patch_validating_webhook_configuration(self, name: str, patch: Any) -> None:
        self.patches.append(patch)
        if self.refuse_patch:  # as the API server answers an invalid patch: the value it was sent, echoed
            value = next(op["value"] for op in patch if op["path"].endswith("path"))
            refused = ApiException(status=422, reason="Unprocessable Entity")
            refused.body = f'{{"message": "{name} is invalid: webhooks[0].clientConfig.service.path: {value}"}}'
            raise refused


async def certificates(apis: FakeApis, api: Any) -> Certificates:
    certs = Certificates(api, "ops", "albm-webhook-tls", ["127.0.0.1"], "albm")
    certs._core = apis  # type: ignore[assignment]
    certs._admission = apis  # type: ignore[assignment]
    return certs


async def test_a_refused_configuration_write_never_carries_the_token_into_an_error() -> None:
    b = bundle()
    apis = FakeApis(b.to_secret_data(), refuse_patch=True)
    async with k8s.ApiClient() as api:
        certs = await certificates(apis, api)
        with pytest.raises(CertificateError) as refused:
            await certs.configure(await certs.ensure())
    assert apis.patches, "the patch was tried"
    assert b.path_token not in str(refused.value) and "422" in str(refused.value)


async def test_a_rotation_keeps_the_token_before_it_heard_for_a_grace_period() -> None:
    """To rotate, the key is deleted from the Secret: the new token is made, and the one the replicas and the
    configuration have until they follow is kept in the Secret, heard for PREVIOUS_TOKEN_SECONDS."""
    b = bundle()
    apis = FakeApis(b.to_secret_data())
    async with k8s.ApiClient() as api:
        certs = await certificates(apis, api)
        assert (await certs.ensure()).path_token == b.path_token
        assert apis.patches == [], "the Secret only: the configuration is the leader's to write (configure)"
        assert apis.data is not None
        del apis.data["path-token"]
        rotated = await certs.ensure()
    now = dt.datetime.now(dt.UTC)
    assert rotated.path_token not in ("", b.path_token) and rotated.ca_cert == b.ca_cert
    assert rotated.previous_token == b.path_token
    assert Bundle.from_secret_data(apis.data) == rotated, "kept in the Secret, for the other replica"
    assert set(rotated.tokens(now)) == {rotated.path_token, b.path_token}
    assert rotated.tokens(now + dt.timedelta(seconds=PREVIOUS_TOKEN_SECONDS + 1)) == [rotated.path_token]


async def test_a_token_that_is_not_ascii_gets_a_new_token_and_keeps_the_ca() -> None:
    b = bundle()
    data = {**b.to_secret_data(), "path-token": base64.b64encode(("é" * 43).encode()).decode()}
    apis = FakeApis(data)
    async with k8s.ApiClient() as api:
        made = await (await certificates(apis, api)).ensure()
    assert made.ca_cert == b.ca_cert and made.ca_key == b.ca_key, "the Secret is not replaced with a new CA"
    assert len(made.path_token) >= 43 and made.path_token.isascii()


def replica_context(b: Bundle) -> ssl.SSLContext:
    """A replica forwarding under mTLS, trusting the server's CA whatever it is (the check here is the server's)."""
    context = client_context(b, mtls=True)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def test_a_new_install_ca_replaces_the_old_one_in_the_servers_trust_and_refusals_are_counted() -> None:
    """A Secret made again (a new CA): the server presents the new certificate and trusts the new CA for the
    replicas' forwarding, and no longer the old one (a context's trust store can only grow: it is built again)."""
    old, new = bundle(), bundle()
    api_ca, api_key = make_ca("API server's webhook client CA", 1, NOW)
    refused: list[int] = []
    tls = ServerTLS(old, api_ca, lambda: refused.append(1))
    api = ssl.create_default_context()
    api.check_hostname, api.verify_mode = False, ssl.CERT_NONE
    cert, key = make_client(api_ca, api_key, "kube-apiserver", 1, NOW)
    api.load_cert_chain(f"/proc/self/fd/{_memfd(cert + key)}")
    assert await handshake(tls.front, replica_context(old)) and await handshake(tls.front, api)
    tls.use(new)
    assert not await handshake(tls.front, replica_context(old)), "the old install CA is trusted no more"
    assert await handshake(tls.front, replica_context(new)) and await handshake(tls.front, api)
    assert await handshake(tls.front, ssl.create_default_context(cadata=new.ca_cert.decode())) is False
    assert len(refused) >= 2, "the old CA's certificate and the one without any, counted"
