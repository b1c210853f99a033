"""The operator's own ALB client (alb_membership.alb.client.AlbClient), pointed at an emulator process."""

from __future__ import annotations

import aiohttp

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.retry import RetryPolicy
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, EmulatorProcess


def alb_client(
    session: aiohttp.ClientSession,
    emulator: EmulatorProcess,
    creds: Credentials | None = None,
    retry: RetryPolicy | None = None,
) -> AlbClient:
    """With the emulator's AccessKey unless ``creds`` says otherwise, and the client's own retries unless ``retry``
    says otherwise."""
    return AlbClient(
        session,
        Endpoint.from_url(emulator.url),
        StaticCredentials(creds or Credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET)),
        retry=retry,
    )
