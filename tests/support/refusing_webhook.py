"""Another team's validating webhook that refuses every pod deletion in one namespace: the API server calls it beside
the deletion gate (validating webhooks run in parallel), so the gate takes the pod's server out and the deletion is
then refused. Served over TLS on loopback from this process, for as long as the context lasts."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes

from alb_membership.gate.pki import make_ca, make_serving


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": False,
                "status": {"code": 403, "message": "another team's policy: pods here are not deleted today"},
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def refusing_pod_deletions(api_client: kubernetes.client.ApiClient, namespace: str) -> Iterator[None]:
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = make_ca("refusing-webhook-ca", 1, now)
    cert, key = make_serving(ca_cert, ca_key, ["127.0.0.1"], 1, now)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tls.crt").write_bytes(cert)
        (Path(tmp) / "tls.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
    name = f"refuse-deletions-{namespace}"
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "refuse.deletions.test.albmembership.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.server_address[1]}/",
                        "caBundle": base64.b64encode(ca_cert).decode(),
                    },
                    "rules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]}
                    ],
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
                        ]
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:
        yield
    finally:
        admission.delete_validating_webhook_configuration(name)
        server.shutdown()
        server.server_close()
        thread.join(5)
