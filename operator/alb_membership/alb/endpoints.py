"""Where the ALB API is: public, VPC-internal, or an explicit URL (the local emulator)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_REGION = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # scheme://host[:port], no path
    host: str  # the Host header, which is signed

    @classmethod
    def for_region(cls, region: str, vpc: bool = False) -> Endpoint:
        if not _REGION.match(region):
            raise ValueError(f"region {region!r} does not look like a region id such as cn-hangzhou")
        host = f"alb{'-vpc' if vpc else ''}.{region}.aliyuncs.com"
        return cls(base_url=f"https://{host}", host=host)

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"endpoint {url!r} must be http(s)://host[:port]")
        return cls(base_url=f"{parts.scheme}://{parts.netloc}", host=parts.netloc)


def resolve(region: str | None, endpoint_url: str | None, vpc: bool = False) -> Endpoint:
    if endpoint_url:
        return Endpoint.from_url(endpoint_url)
    if region:
        return Endpoint.for_region(region, vpc)
    raise ValueError("give a region (e.g. cn-hangzhou) or an endpoint URL")
