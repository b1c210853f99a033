"""The ``alb-membership-operator`` command."""

from __future__ import annotations

import argparse
import sys

from alb_membership import __version__, oneshot
from alb_membership.alb.batching import MAX_BATCH_SIZE
from alb_membership.settings import Settings, add_run_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alb-membership-operator",
        description="Keeps Alibaba Cloud ALB server groups free of backends that are going away.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the operator (watches ServerGroupMemberships, pods, EndpointSlices)",
        description="Run the operator. Credentials come from the Alibaba Cloud default "
        "chain: ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET[/_SECURITY_TOKEN], RRSA (OIDC), the "
        "CLI profile, or the ECS instance role.",
    )
    add_run_arguments(run)
    remove = commands.add_parser(
        "remove-servers",
        help="remove given servers from a group now and print the JobId",
        description="Remove servers from an ALB server group now; prints one JSON line "
        "per call (JobId, RequestId, ClientToken). Exit status 1: the cloud refused "
        "(the error line names its code and RequestId); 3: a job failed (--wait).",
    )
    oneshot.add_arguments(remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "remove-servers":
        if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
            parser.error(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
        try:
            args.settings = Settings(region=args.region, endpoint=args.endpoint, vpc_endpoint=args.vpc_endpoint)
            args.settings.endpoint_for(args.region)
        except ValueError as exc:
            parser.error(str(exc))
        return oneshot.remove_servers(args)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from alb_membership.run import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
