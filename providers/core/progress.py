"""Progress lines from providers: the engine shows a provider's stderr as it comes."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"[mldeploy] {message}", file=sys.stderr, flush=True)
