"""The ALB emulator (``python -m alb_emulator``) with aiohttp's request-line limit raised to ALBM_BENCH_MAX_LINE bytes.

RemoveServersFromServerGroup carries its servers in the query string, as the official SDK sends them (about 85 bytes
a server), so a call of more than about 95 servers has a request line longer than aiohttp's default 8,190 bytes:
the emulator as shipped answers it with a plain-text 400 before its handler runs (and logs nothing), although the
API takes 200 servers a call. The benchmark's batch-200 runs need the larger limit; nothing else changes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from aiohttp import web

LIMIT = int(os.environ.get("ALBM_BENCH_MAX_LINE", "65536"))
_init = web.AppRunner.__init__


def _wide(self: web.AppRunner, app: web.Application, **kwargs: Any) -> None:
    kwargs.setdefault("max_line_size", LIMIT)
    kwargs.setdefault("max_field_size", LIMIT)
    _init(self, app, **kwargs)


web.AppRunner.__init__ = _wide  # type: ignore[method-assign]

from alb_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
