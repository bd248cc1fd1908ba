"""Who may use the dashboard, and who launched a run.

The dashboard signs people in one of three ways, decided by `sign_in` from what is configured:

- `"oidc"`: an `[auth]` section in `.streamlit/secrets.toml` names the team's identity provider
  (OpenID Connect, through Streamlit's `st.login`). Each person signs in as themselves and the
  runs they launch record their email (`launcher`). When it is configured it is the only way in:
  TL_PASSWORD is then ignored, since a shared password would let someone in without a name.
  A section that is there but incomplete keeps everyone out with what to fix (`oidc_problem`),
  rather than falling back to a weaker sign-in.
- `"password"`: TL_PASSWORD, one password shared by the team. Runs launched this way record
  nobody: a shared password names no one, and the server's OS user would name the wrong person.
- `"none"`: neither, on localhost: the person at this machine. Runs record the OS user the
  dashboard runs as, as the command line does (`os_user`).

Served beyond localhost, the dashboard needs one of the first two (`serving_problem`). Streamlit
itself is imported only by the dashboard (ui/session.py): this module reads the `[auth]` section
as a plain mapping.
"""

from __future__ import annotations

import getpass
import hmac
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from .. import settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SECRETS = ".streamlit/secrets.toml"
SHARED_KEYS = ("redirect_uri", "cookie_secret")  # in [auth] itself, for every provider
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")  # in [auth] or [auth.<name>]
# A default provider ([auth] alone) is named on its button after its metadata's host.
KNOWN_HOSTS = {
    "accounts.google.com": "Google",
    "login.microsoftonline.com": "Microsoft",
    "okta.com": "Okta",
    "auth0.com": "Auth0",
    "gitlab.com": "GitLab",
}
LAUNCHED_BY_MAX = 200  # the store's runs.launched_by column


def password() -> str | None:
    return settings.current().password


def check_password(given: str) -> bool:
    expected = password()
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


# --- the identity provider ([auth] in secrets.toml) ----------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One identity provider to sign in with: `name` is what `st.login` takes (None: the default
    provider, configured in [auth] itself), `label` what its button says."""

    name: str | None
    label: str


def providers(auth: Mapping | None) -> list[Provider]:
    """The identity providers an [auth] section configures: the default one (its keys in [auth]
    itself) first, then each [auth.<name>] section, in the file's order."""
    if not auth:
        return []
    found = []
    if "client_id" in auth or "server_metadata_url" in auth:
        found.append(Provider(None, _host_label(str(auth.get("server_metadata_url", "")))))
    for name, section in auth.items():
        if isinstance(section, Mapping):
            found.append(Provider(name, name[:1].upper() + name[1:]))
    return found


def _host_label(url: str) -> str:
    host = urlparse(url).hostname or ""
    return next(
        (label for known, label in KNOWN_HOSTS.items() if host == known or host.endswith("." + known)),
        host or "your identity provider",
    )


def oidc_problem(auth: Mapping | None) -> str | None:
    """What keeps sign-in through the identity provider from working, or None if nothing does.
    Checked before anyone is let in, so a wrong secrets.toml says what to fix instead of failing
    at the provider (Streamlit would only check when the button is pressed)."""
    if not auth:
        return None
    where = f"[auth] in {SECRETS}"
    missing = [k for k in SHARED_KEYS if not auth.get(k)]
    if missing:
        return (
            f"{where} lacks {', '.join(missing)}: every provider needs redirect_uri (this dashboard's address "
            f"ending in /oauth2callback) and cookie_secret (a long random string); add them"
        )
    redirect = str(auth["redirect_uri"])
    if urlparse(redirect).scheme not in ("http", "https") or not redirect.rstrip("/").endswith("/oauth2callback"):
        return (
            f"{where}: redirect_uri = {redirect!r} must be this dashboard's absolute address ending in "
            f"/oauth2callback (e.g. http://localhost:8501/oauth2callback), as registered with the provider"
        )
    found = providers(auth)
    if not found:
        return (
            f"{where} names no identity provider: add client_id, client_secret and server_metadata_url to "
            f"[auth] (one provider) or to an [auth.<name>] section per provider"
        )
    for p in found:
        section, at = (auth, where) if p.name is None else (auth[p.name], f"[auth.{p.name}] in {SECRETS}")
        if p.name is not None and "_" in p.name:
            return (
                f"{at}: Streamlit refuses provider names with an underscore; rename the section "
                f"(e.g. [auth.{p.name.replace('_', '')}])"
            )
        if missing := [k for k in PROVIDER_KEYS if not section.get(k)]:
            return f"{at} lacks {', '.join(missing)}: copy them from the app you registered with the provider"
        if urlparse(str(section["server_metadata_url"])).scheme not in ("http", "https"):
            return f"{at}: server_metadata_url must be an absolute URL, the provider's .well-known/openid-configuration"
    if importlib.util.find_spec("authlib") is None:
        return (
            "signing in through an identity provider needs Authlib, which is not installed: "
            "pip install -r requirements.txt"
        )
    return None


# --- which sign-in, and who launched ------------------------------------------------------------


def sign_in(auth: Mapping | None) -> str:
    """How the dashboard signs people in: "oidc" when [auth] is configured (it wins over
    TL_PASSWORD), "password" when TL_PASSWORD is set, else "none"."""
    if auth:
        return "oidc"
    return "password" if password() else "none"


def serving_problem(address: str | None, auth: Mapping | None = None) -> str | None:
    """Why the dashboard must not serve on `address`, or None if it may."""
    if (address or "127.0.0.1") in LOOPBACK or sign_in(auth) != "none":
        return None
    return (
        f"the dashboard is served on {address}, reachable from the network, but nobody has to sign in; "
        f"set TL_PASSWORD (docker run -e TL_PASSWORD=...), configure your identity provider in "
        f"[auth] of {SECRETS} (README: Sign in with your identity provider), or serve on 127.0.0.1"
    )


def identity(user: Mapping) -> str | None:
    """The name a signed-in person's runs record: their email, else their name, else the provider's
    subject id; None if the provider sent none of them."""
    for key in ("email", "name", "sub"):
        value = user.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:LAUNCHED_BY_MAX]
    return None


def os_user() -> str | None:
    """The OS account this process runs as (what the command line records as launched_by), or None
    where it has no name (a container's bare uid)."""
    try:
        return getpass.getuser()[:LAUNCHED_BY_MAX] or None
    except (KeyError, OSError):  # no login name and no passwd entry for the uid
        return None


def launcher(how: str, user: Mapping | None = None) -> str | None:
    """Who a run launched from the dashboard records, for the sign-in `how` (see `sign_in`)."""
    if how == "oidc":
        return identity(user or {})
    if how == "password":
        return None
    return os_user()
