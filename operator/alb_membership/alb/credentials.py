"""Credentials from the official ``alibabacloud-credentials`` default chain, used through its async API.

The chain tries, in order: ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET[/SECURITY_TOKEN] in the environment, RRSA (OIDC
role via ALIBABA_CLOUD_ROLE_ARN, _OIDC_PROVIDER_ARN, _OIDC_TOKEN_FILE), the CLI profile, the credentials file,
and the ECS instance's RAM role; STS credentials are refreshed by the library before they expire.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol


class CredentialsError(Exception):
    """No usable credentials. The message names the sources tried, never a secret."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    provider: str = "static"


class CredentialSource(Protocol):
    async def get(self) -> Credentials: ...


@dataclass
class StaticCredentials:
    credentials: Credentials

    async def get(self) -> Credentials:
        return self.credentials


class DefaultChain:
    """The library's default chain behind an asyncio lock.

    Why the lock: the library's async refresh (``RefreshCachedSupplier._refresh_cache_async``) takes a
    ``threading.Lock`` and holds it across an ``await``; a second coroutine arriving meanwhile would block
    the whole event loop for up to 5 s on that lock. Serialising the calls here means it is never contended.
    """

    def __init__(self, client: Any = None) -> None:
        if client is None:
            # Imported late: the library reads its environment variables at import time.
            from alibabacloud_credentials.client import Client

            client = Client()
        self._client = client
        self._lock = asyncio.Lock()

    async def get(self) -> Credentials:
        async with self._lock:
            try:
                model = await self._client.get_credential_async()
            except Exception as exc:
                raise CredentialsError(f"no usable Alibaba Cloud credentials: {exc}") from None
        return Credentials(
            access_key_id=model.access_key_id,
            access_key_secret=model.access_key_secret,
            security_token=model.security_token or None,
            provider=model.provider_name or "default",
        )
