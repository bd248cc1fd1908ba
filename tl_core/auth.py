"""Who may use the dashboard: anyone on this machine; over a network, whoever knows TL_PASSWORD."""

from __future__ import annotations

import hmac

from . import settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def password() -> str | None:
    return settings.current().password


def serving_problem(address: str | None) -> str | None:
    """Why the dashboard must not serve on `address`, or None if it may."""
    if (address or "127.0.0.1") in LOOPBACK or password():
        return None
    return (f"the dashboard is served on {address}, reachable from the network, but no password is set; "
            f"set TL_PASSWORD (docker run -e TL_PASSWORD=...) or serve on 127.0.0.1")


def check_password(given: str) -> bool:
    expected = password()
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())
