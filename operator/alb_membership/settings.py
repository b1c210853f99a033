"""Operator settings from flags, each with an ALBM_* environment variable as its default (for the chart)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alb_membership.alb.batching import MAX_BATCH_SIZE
from alb_membership.alb.endpoints import Endpoint, resolve
from alb_membership.model.membership import DEFAULT_ENI_ANNOTATION


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"ALBM_{name}", default)


def _option(parser: argparse.ArgumentParser, flag: str, help: str, default: str | None = None, **kw: Any) -> None:
    """A flag whose default comes from its environment variable, ALBM_ and the flag's name in capitals
    (--batch-size: ALBM_BATCH_SIZE), which the help names."""
    env = flag.removeprefix("--").replace("-", "_").upper()
    if kw.get("action") == "store_true":
        kw["default"] = _env(env) == "true"
        help += f" [env ALBM_{env}=true]"
    else:
        kw["default"] = _env(env, default)
        help += f" [env ALBM_{env}]"
    parser.add_argument(flag, help=help, **kw)


def add_cloud_arguments(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--region", "default ALB region, e.g. cn-hangzhou")
    _option(
        parser,
        "--endpoint",
        "explicit ALB API URL, e.g. http://127.0.0.1:8080 for the local emulator (overrides --region for every call)",
    )
    _option(
        parser,
        "--vpc-endpoint",
        "use alb-vpc.<region>.aliyuncs.com instead of the public endpoint",
        action="store_true",
    )


def _positive(kind: type[int] | type[float], low: float, high: float | None = None):  # type: ignore[no-untyped-def]
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {kind.__name__}") from None
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return number

    return parse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_cloud_arguments(parser)
    _option(
        parser,
        "--batch-size",
        "servers per RemoveServersFromServerGroup call, 1-200 (default 40, the API page's figure)",
        "40",
        type=_positive(int, 1, MAX_BATCH_SIZE),
    )
    _option(
        parser,
        "--coalesce-seconds",
        "how long removals for one group wait for others to join the same call (default 0.2)",
        "0.2",
        type=_positive(float, 0, 10),
    )
    _option(
        parser,
        "--api-rate-limit",
        "calls of each write action (RemoveServersFromServerGroup, AddServersToServerGroup) allowed per "
        "--api-rate-period seconds (default 180, under the cloud's 200/60s; reads are held at 90%% of their quota)",
        "180",
        type=_positive(int, 1),
    )
    _option(
        parser,
        "--api-rate-period",
        "the window of --api-rate-limit in seconds (default 60)",
        "60",
        type=_positive(float, 0.001),
    )
    _option(
        parser,
        "--job-poll-seconds",
        "how often running jobs are checked with ListAsynJobs (default 0.5)",
        "0.5",
        type=_positive(float, 0.05),
    )
    _option(
        parser,
        "--anti-entropy-seconds",
        "how often owned servers are compared with the cluster and the groups (ListServerGroupServers, paged), "
        "besides once after start (default 300)",
        "300",
        type=_positive(float, 1),
    )
    parser.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        default=[n for n in (_env("NAMESPACES") or "").split(",") if n],
        help="watch only this namespace (repeatable, exact names); "
        "default: the whole cluster [env ALBM_NAMESPACES, comma-separated]",
    )
    _option(
        parser,
        "--eni-annotation",
        "pod annotation holding the ENI id for backend Eni (default %(default)s)",
        DEFAULT_ENI_ANNOTATION,
    )
    _option(parser, "--log-format", "log format; the Helm chart sets json", "text", choices=["json", "text"])
    _option(
        parser,
        "--metrics-port",
        "port for /metrics, /healthz and /readyz; 0 disables (default 8080)",
        "8080",
        type=_positive(int, 0, 65535),
    )
    parser.add_argument(
        "--listen-address",
        "--metrics-address",  # its name before the webhook bound to it too
        dest="listen_address",
        default=_env("LISTEN_ADDRESS", _env("METRICS_ADDRESS", "0.0.0.0")),
        help="address the metrics/probe port and the deletion gate's webhook port bind to "
        "[env ALBM_LISTEN_ADDRESS; --metrics-address and ALBM_METRICS_ADDRESS are its old names]",
    )
    _option(
        parser,
        "--webhook-port",
        "port of the deletion gate's HTTPS endpoint; 0 (the default) serves none",
        "0",
        type=_positive(int, 0, 65535),
    )
    _option(
        parser,
        "--webhook-hosts",
        "names (and IPs) the webhook's certificate is for, comma-separated, e.g. the Service's DNS names",
        "",
    )
    _option(
        parser,
        "--webhook-secret",
        "Secret (in --leader-election-namespace) holding the webhook's CA and certificate; made on first start "
        "(default %(default)s)",
        "alb-membership-operator-webhook-tls",
    )
    _option(
        parser,
        "--webhook-configuration",
        "ValidatingWebhookConfiguration whose caBundle and path (with this install's token) the operator keeps in step",
        "",
    )
    _option(
        parser,
        "--webhook-client-ca",
        "PEM file of the CA that signed the API server's admission client certificate (AdmissionConfiguration "
        "kubeConfigFile): the webhook then requires and verifies it (mTLS); empty: no client certificate asked",
        "",
    )
    _option(
        parser,
        "--webhook-advertise",
        "this replica's webhook URL, e.g. https://POD_IP:9443, written on the Lease while it leads so that a "
        "standby can forward gated reviews to it",
        "",
    )
    _option(
        parser,
        "--leader-elect",
        "run as one of several replicas: only the holder of a coordination.k8s.io Lease acts, the others stand by",
        action="store_true",
    )
    _option(
        parser,
        "--leader-election-namespace",
        "namespace of the Lease (default: $POD_NAMESPACE or default)",
        os.environ.get("POD_NAMESPACE", "default"),
    )
    _option(
        parser,
        "--leader-election-name",
        "name of the Lease (default %(default)s)",
        "alb-membership-operator",
    )


@dataclass(frozen=True)
class Settings:
    region: str | None
    endpoint: str | None
    vpc_endpoint: bool = False
    batch_size: int = 40
    coalesce_seconds: float = 0.2
    api_rate_limit: int = 180
    api_rate_period: float = 60.0
    job_poll_seconds: float = 0.5
    anti_entropy_seconds: float = 300.0
    namespaces: tuple[str, ...] = ()
    eni_annotation: str = DEFAULT_ENI_ANNOTATION
    log_format: str = "text"
    metrics_port: int = 8080
    listen_address: str = "0.0.0.0"
    leader_elect: bool = False
    leader_election_namespace: str = "default"
    leader_election_name: str = "alb-membership-operator"
    webhook_port: int = 0
    webhook_hosts: tuple[str, ...] = ()
    webhook_secret: str = "alb-membership-operator-webhook-tls"
    webhook_configuration: str | None = None
    webhook_advertise: str | None = None
    webhook_client_ca: bytes | None = None  # the PEM, read at start

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        settings = cls(
            region=args.region,
            endpoint=args.endpoint,
            vpc_endpoint=args.vpc_endpoint,
            batch_size=int(args.batch_size),
            coalesce_seconds=float(args.coalesce_seconds),
            api_rate_limit=int(args.api_rate_limit),
            api_rate_period=float(args.api_rate_period),
            job_poll_seconds=float(args.job_poll_seconds),
            anti_entropy_seconds=float(args.anti_entropy_seconds),
            namespaces=tuple(args.namespaces),
            eni_annotation=args.eni_annotation,
            log_format=args.log_format,
            metrics_port=int(args.metrics_port),
            listen_address=args.listen_address,
            leader_elect=args.leader_elect,
            leader_election_namespace=args.leader_election_namespace,
            leader_election_name=args.leader_election_name,
            webhook_port=int(args.webhook_port),
            webhook_hosts=tuple(h for h in args.webhook_hosts.split(",") if h),
            webhook_secret=args.webhook_secret,
            webhook_configuration=args.webhook_configuration or None,
            webhook_advertise=args.webhook_advertise or None,
            webhook_client_ca=_read_ca(args.webhook_client_ca) if args.webhook_client_ca else None,
        )
        if settings.webhook_port and not settings.webhook_hosts:
            raise ValueError("--webhook-port needs --webhook-hosts (the names its certificate is for)")
        if not (settings.region or settings.endpoint):
            raise ValueError(
                "run needs --region (the region of resources without spec.region) or --endpoint (one API URL for "
                "every call, e.g. the local emulator's)"
            )
        settings.endpoint_for(settings.region)  # a bad region or URL fails at start, not at the first removal
        return settings

    def endpoint_for(self, region: str | None) -> Endpoint:
        return resolve(region or self.region, self.endpoint, self.vpc_endpoint)


def _read_ca(path: str) -> bytes:
    """A bad CA fails at start, not at the API server's first call."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--webhook-client-ca {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError(f"--webhook-client-ca {path}: no PEM certificate in it")
    return pem
