"""Connection settings: argument first, then the environment, then a ``.env`` file."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values, find_dotenv

from polars_azurechat.errors import ConfigurationError

if TYPE_CHECKING:
    from polars_azurechat.transport.auth import KeyAuth, TokenAuth

__all__ = [
    "DEFAULT_API_VERSION",
    "V1",
    "ChatConfig",
    "check_deployment_name",
    "check_endpoint",
    "host_of",
    "scrub",
    "shown_url",
]

logger = logging.getLogger(__name__)

#: The api-version used when neither an argument nor ``OPENAI_API_VERSION`` gives one
#: (Azure OpenAI's GA data-plane version).
DEFAULT_API_VERSION = "2024-10-21"
#: ``api_version=V1`` (or a ``base_url`` ending in ``/openai/v1``): Azure's v1 API,
#: ``<endpoint>/openai/v1/chat/completions`` with the deployment in the body's
#: ``model`` and no api-version.
V1 = "v1"

ENV_ENDPOINT = "AZURE_OPENAI_ENDPOINT"
ENV_API_KEY = "AZURE_OPENAI_API_KEY"
ENV_AD_TOKEN = "AZURE_OPENAI_AD_TOKEN"  # noqa: S105 - a variable name
ENV_API_VERSION = "OPENAI_API_VERSION"
ENV_DEPLOYMENT = "AZURE_OPENAI_DEPLOYMENT"
ENV_BASE_URL = "OPENAI_BASE_URL"  # as the openai SDK names it


@dataclasses.dataclass(frozen=True, slots=True)
class ChatConfig:
    """Where and how to reach an Azure OpenAI resource.

    Build it with :meth:`from_env`, which fills what is not given from the environment and
    a ``.env`` file. Exactly one credential is used: a key, a fixed token, a token
    provider or an azure-identity credential (with none given, ``from_env`` uses
    ``DefaultAzureCredential`` when ``polars-azurechat[azure]`` is installed). Keys and
    tokens never appear in ``repr`` or in any log line or error.

    Parameters
    ----------
    azure_endpoint
        ``https://<resource>.openai.azure.com`` (or the emulator's ``http://127.0.0.1:<port>``).
    api_key
        The resource key, sent as the ``api-key`` header.
    api_version
        Azure's ``api-version`` query parameter of the classic routes
        (``/openai/deployments/<name>/...``), or ``"v1"`` for the v1 API
        (``/openai/v1/...``, the deployment named in the body's ``model``).
    azure_ad_token
        A Microsoft Entra ID token, sent as ``Authorization: Bearer``, instead of a key.
    deployment
        The default deployment for calls that do not name one.
    azure_ad_token_provider
        A callable returning a Microsoft Entra ID token (as the openai SDK's, e.g.
        azure-identity's ``get_bearer_token_provider(credential, scope)``); called off
        the event loop, its token cached and fetched again when due or refused.
    credential
        An azure-identity ``TokenCredential`` (sync or async); its tokens (scope
        ``https://cognitiveservices.azure.com/.default``) are refreshed before
        ``expires_on``.
    base_url
        The v1 API's base URL, ``https://<resource>.openai.azure.com/openai/v1/``, as
        the openai SDK's ``OpenAI(base_url=...)`` takes it: instead of
        ``azure_endpoint``; it sets ``api_version="v1"``.

    Examples
    --------
    >>> cfg = ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="sk-secret")
    >>> cfg
    ChatConfig(azure_endpoint='http://127.0.0.1:9', api_key='***', api_version='2024-10-21', azure_ad_token=None, deployment=None)
    >>> v1 = ChatConfig(base_url="http://127.0.0.1:9/openai/v1/", api_key="sk-secret")
    >>> v1.azure_endpoint, v1.api_version, v1.surface
    ('http://127.0.0.1:9', 'v1', 'v1')
    """

    azure_endpoint: str = ""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    api_version: str = DEFAULT_API_VERSION
    azure_ad_token: str | None = dataclasses.field(default=None, repr=False)
    deployment: str | None = None
    azure_ad_token_provider: Callable[[], Any] | None = dataclasses.field(
        default=None, repr=False
    )
    credential: Any = dataclasses.field(default=None, repr=False)
    base_url: dataclasses.InitVar[str | None] = None

    def __post_init__(self, base_url: str | None) -> None:
        if base_url:
            endpoint = v1_endpoint(base_url)
            if self.azure_endpoint and self.azure_endpoint.rstrip("/") != endpoint:
                msg = (
                    f"azure_endpoint {host_of(self.azure_endpoint)} and base_url "
                    f"{host_of(endpoint)} name different resources: give one of them"
                )
                raise ConfigurationError(msg)
            object.__setattr__(self, "azure_endpoint", endpoint)
            object.__setattr__(self, "api_version", V1)
        if not self.azure_endpoint:
            msg = (
                f"no Azure endpoint: pass azure_endpoint= (or set {ENV_ENDPOINT}), or "
                f"the v1 API's base_url= (or set {ENV_BASE_URL})"
            )
            raise ConfigurationError(msg)
        check_endpoint(self.azure_endpoint)
        if self.deployment is not None:
            check_deployment_name(self.deployment)
        given = [
            name
            for name in (
                "api_key",
                "azure_ad_token",
                "azure_ad_token_provider",
                "credential",
            )
            if getattr(self, name)
        ]
        if not given:
            msg = (
                f"no credential: pass api_key= (or set {ENV_API_KEY}), or an Entra ID "
                "credential= / azure_ad_token_provider= (or install the extra "
                f"'polars-azurechat[azure]' for DefaultAzureCredential, or set {ENV_AD_TOKEN})"
            )
            raise ConfigurationError(msg)
        if len(given) > 1:
            msg = f"{' and '.join(given)} are mutually exclusive; give only one"
            raise ConfigurationError(msg)
        if self.azure_ad_token_provider is not None and not callable(
            self.azure_ad_token_provider
        ):
            msg = "azure_ad_token_provider must be a callable returning a token"
            raise ConfigurationError(msg)
        if self.credential is not None and not callable(
            getattr(self.credential, "get_token", None)
        ):
            msg = (
                "credential must be an azure-identity TokenCredential (with get_token), "
                f"not {type(self.credential).__name__}"
            )
            raise ConfigurationError(msg)
        if not self.api_version:
            msg = f"api_version is empty: pass api_version= or set {ENV_API_VERSION}"
            raise ConfigurationError(msg)

    def __repr__(self) -> str:
        key = "'***'" if self.api_key else "None"
        token = "'***'" if self.azure_ad_token else "None"
        extra = ""
        if self.azure_ad_token_provider is not None:
            extra += ", azure_ad_token_provider=<callable>"
        if self.credential is not None:
            extra += f", credential=<{type(self.credential).__name__}>"
        return (
            f"ChatConfig(azure_endpoint={self.azure_endpoint!r}, api_key={key}, "
            f"api_version={self.api_version!r}, azure_ad_token={token}, "
            f"deployment={self.deployment!r}{extra})"
        )

    @property
    def host(self) -> str:
        """The endpoint's ``host[:port]`` (what errors name; never a secret)."""
        return host_of(self.azure_endpoint)

    @property
    def surface(self) -> str:
        """``"v1"`` (Azure's v1 API) or ``"classic"`` (the api-version routes)."""
        return surface_of(self.api_version)

    @classmethod
    def from_env(
        cls,
        *,
        azure_endpoint: str | None = None,
        api_key: str | None = None,
        api_version: str | None = None,
        azure_ad_token: str | None = None,
        deployment: str | None = None,
        azure_ad_token_provider: Callable[[], Any] | None = None,
        credential: Any = None,
        dotenv_path: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
    ) -> ChatConfig:
        """Resolve every setting: argument, then environment variable, then ``.env``.

        The ``.env`` file is read with python-dotenv (found by searching up from the
        working directory unless ``dotenv_path`` is given) and never changes
        ``os.environ``.

        The endpoint is ``azure_endpoint`` (``AZURE_OPENAI_ENDPOINT``), or the v1 API's
        ``base_url`` (the argument; or ``OPENAI_BASE_URL``, as the openai SDK reads it,
        when no Azure endpoint is given). Given both as arguments, they must name the
        same resource and the v1 API is used.

        Raises
        ------
        ConfigurationError
            When the endpoint or the credential is missing; the message names the
            environment variable to set.

        Examples
        --------
        >>> import os
        >>> os.environ["AZURE_OPENAI_ENDPOINT"] = "http://127.0.0.1:9"
        >>> ChatConfig.from_env(api_key="k").azure_endpoint
        'http://127.0.0.1:9'
        """
        dotenv = _read_dotenv(dotenv_path)

        def pick(value: str | None, name: str) -> str | None:
            if value:
                return value
            return os.environ.get(name) or dotenv.get(name) or None

        endpoint = pick(azure_endpoint, ENV_ENDPOINT)
        # OPENAI_BASE_URL is read only without an Azure endpoint: people who also use
        # OpenAI's own API often have it set to https://api.openai.com/v1
        v1_base = base_url or (None if endpoint else pick(None, ENV_BASE_URL))
        if not endpoint and not v1_base:
            msg = (
                f"no Azure endpoint: pass azure_endpoint= (or set {ENV_ENDPOINT}), or "
                f"the v1 API's base_url= (or set {ENV_BASE_URL})"
            )
            raise ConfigurationError(msg)
        key: str | None
        token: str | None
        if azure_ad_token or azure_ad_token_provider or credential:
            key, token = api_key, azure_ad_token  # several given: __post_init__ refuses
        else:
            key = pick(api_key, ENV_API_KEY)
            token = None if key else pick(None, ENV_AD_TOKEN)
            if not key and not token:
                credential = default_credential()
        return cls(
            azure_endpoint=(endpoint or "").rstrip("/"),
            base_url=v1_base,
            api_key=key,
            api_version=pick(api_version, ENV_API_VERSION) or DEFAULT_API_VERSION,
            azure_ad_token=token,
            deployment=pick(deployment, ENV_DEPLOYMENT),
            azure_ad_token_provider=azure_ad_token_provider,
            credential=credential,
        )

    def resolve_deployment(self, deployment: str | None) -> str:
        """Return ``deployment``, else the configured one, else raise naming the variable."""
        name = deployment or self.deployment
        if not name:
            msg = f"no deployment: pass deployment= or set {ENV_DEPLOYMENT}"
            raise ConfigurationError(msg)
        return check_deployment_name(name)

    def auth_headers(self) -> Mapping[str, str]:
        """The HTTP header of a static credential (a key, or a fixed token).

        Raises ``ConfigurationError`` for a provider or a credential: their tokens are
        fetched as needed (see :meth:`auth`).
        """
        if self.api_key:
            return {"api-key": self.api_key}
        if self.azure_ad_token:
            return {"Authorization": f"Bearer {self.azure_ad_token}"}
        msg = "this configuration fetches Entra ID tokens as needed; use auth()"
        raise ConfigurationError(msg)

    def auth(self) -> KeyAuth | TokenAuth:
        """What each request carries: a static header, or tokens kept fresh."""
        from polars_azurechat.transport.auth import KeyAuth, TokenAuth

        if self.api_key or self.azure_ad_token:
            return KeyAuth(self.auth_headers())
        return TokenAuth(
            provider=self.azure_ad_token_provider, credential=self.credential
        )

    def identity(self) -> str:
        """Who the requests come from, as a hash (never the secret itself)."""
        if self.api_key or self.azure_ad_token:
            secret = json.dumps(sorted(self.auth_headers().items()))
        else:
            source = self.credential or self.azure_ad_token_provider
            secret = f"{type(source).__name__}:{id(source)}"
        text = f"{self.azure_endpoint}|{secret}"
        return hashlib.sha256(text.encode()).hexdigest()


#: What an Azure deployment name is made of (the portal refuses any other character).
_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: Azure's hosts (public, China, US Government clouds): nothing may follow the host in
#: an endpoint of theirs.
_AZURE_HOSTS = (".azure.com", ".azure.cn", ".azure.us")
#: Plain-http hosts already warned about (once per process each).
_warned_plain_http: set[str] = set()


def check_deployment_name(name: object, what: str = "deployment") -> str:
    """``name`` if it is an Azure deployment name, else raise saying what is wrong.

    A deployment name is made of letters, digits, ``-``, ``_`` and ``.`` (not only
    dots); anything else would change the URL it is put in, so it is refused before
    any request.

    Parameters
    ----------
    name
        The name to check.
    what
        What the message calls it.

    Returns
    -------
    str
        ``name``, unchanged.

    Raises
    ------
    ConfigurationError
        ``name`` is not a string of those characters.

    Examples
    --------
    >>> check_deployment_name("gpt-4o-mini_2024.07")
    'gpt-4o-mini_2024.07'
    >>> check_deployment_name("gpt-4o/chat")
    Traceback (most recent call last):
    ...
    polars_azurechat.errors.ConfigurationError: deployment 'gpt-4o/chat' is not an Azure deployment name: use letters, digits, '-', '_' and '.' only
    """
    if (
        not isinstance(name, str)
        or not _DEPLOYMENT_NAME.fullmatch(name)
        or not name.strip(".")
    ):
        msg = (
            f"{what} {name!r} is not an Azure deployment name: use letters, digits, "
            "'-', '_' and '.' only"
        )
        raise ConfigurationError(msg)
    return name


def surface_of(api_version: str | None) -> str:
    """``"v1"`` for the v1 API's ``api_version``, else ``"classic"``.

    Examples
    --------
    >>> surface_of("v1"), surface_of("2024-10-21")
    ('v1', 'classic')
    """
    return V1 if api_version == V1 else "classic"


def v1_endpoint(base_url: object) -> str:
    """The resource endpoint of a v1 base URL (``<endpoint>/openai/v1/``).

    Raises
    ------
    ConfigurationError
        ``base_url`` does not end in ``/openai/v1``.

    Examples
    --------
    >>> v1_endpoint("https://r.openai.azure.com/openai/v1/")
    'https://r.openai.azure.com'
    >>> v1_endpoint("https://api.openai.com/v1")
    Traceback (most recent call last):
    ...
    polars_azurechat.errors.ConfigurationError: base_url https://api.openai.com/v1 is not an Azure OpenAI v1 URL: give https://<resource>.openai.azure.com/openai/v1/ (set OPENAI_BASE_URL), or azure_endpoint=
    """
    text = base_url.strip() if isinstance(base_url, str) else ""
    head, sep, _ = text.rstrip("/").rpartition("/openai/v1")
    if not sep or text.rstrip("/")[len(head) + len(sep) :]:
        shown = shown_url(text).partition("?")[0] if text else repr(base_url)
        msg = (
            f"base_url {shown} is not an Azure OpenAI v1 URL: give "
            f"https://<resource>.openai.azure.com/openai/v1/ (set {ENV_BASE_URL}), "
            "or azure_endpoint="
        )
        raise ConfigurationError(msg)
    check_endpoint(head, "base_url")
    return head


def host_of(url: str) -> str:
    """The ``host[:port]`` of ``url``: never a user name, password, path or query.

    Examples
    --------
    >>> host_of("https://user:pw@r.openai.azure.com:8443/openai/?k=v")
    'r.openai.azure.com:8443'
    >>> host_of("http://[::1]:9/")
    '[::1]:9'
    """
    return urlsplit(url).netloc.rpartition("@")[2]


def check_endpoint(url: object, what: str = "azure_endpoint") -> None:
    """Refuse an endpoint that would cost a request, or leak a secret, before any is sent.

    Refused (:class:`ConfigurationError`, the message saying what to drop): anything
    but an ``http(s)://host[:port]`` URL; a user name or password before the host;
    a query or fragment; a path on an Azure host, or any path holding ``/openai``
    (the package adds ``/openai/deployments/<name>/chat/completions`` itself). A path
    prefix on another host (an API gateway's) is kept. ``http://`` to a host other
    than this machine is allowed with a warning (logged once per host): the key and
    the prompts would cross the network unencrypted.

    Parameters
    ----------
    url
        The endpoint.
    what
        What the message calls it.

    Examples
    --------
    >>> check_endpoint("https://r.openai.azure.com/")
    >>> check_endpoint("https://r.openai.azure.com/openai/deployments?api-version=1")
    Traceback (most recent call last):
    ...
    polars_azurechat.errors.ConfigurationError: azure_endpoint https://r.openai.azure.com/openai/deployments?api-version=… has a query or fragment after the host: drop '?api-version=…' (the api-version is api_version= or OPENAI_API_VERSION)
    """
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # an unclosed IPv6 bracket
        parts = None
    if (
        not isinstance(url, str)
        or parts is None
        or parts.scheme not in ("http", "https")
    ):
        msg = (
            f"{what} must be an http(s) URL such as "
            f"https://<resource>.openai.azure.com (set {ENV_ENDPOINT})"
        )
        raise ConfigurationError(msg)
    if "@" in url:  # read by hand: a password may hold '/', which ends a URL's host
        after = url.partition("://")[2].rpartition("@")[2]
        cut = min((i for i in map(after.find, "/?#") if i >= 0), default=len(after))
        msg = (
            f"{what} holds a user name or password before the host: give "
            f"{parts.scheme}://{after[:cut]} and the key as api_key= (or {ENV_API_KEY})"
        )
        raise ConfigurationError(msg)
    if not parts.hostname:
        msg = f"{what} names no host: give https://<resource>.openai.azure.com"
        raise ConfigurationError(msg)
    host = host_of(url)
    base = f"{parts.scheme}://{host}"
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        msg = f"{what} {base}: its port is not a number"
        raise ConfigurationError(msg) from None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        names = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
        shown = "?" + "&".join(f"{k}=…" for k in names) if names else "?…"
        if parts.fragment and not parts.query:
            shown = "#…"
        msg = (
            f"{what} {base}{parts.path}{shown} has a query or fragment after the "
            f"host: drop '{shown}' (the api-version is api_version= or {ENV_API_VERSION})"
        )
        raise ConfigurationError(msg)
    path = parts.path.rstrip("/")
    if path.lower().endswith("/openai/v1"):
        msg = (
            f"{what} {base}{parts.path} is the v1 API's base URL: pass it as "
            f"base_url= (or set {ENV_BASE_URL}), or give {base}{path[: -len('/openai/v1')]} "
            "with api_version='v1'"
        )
        raise ConfigurationError(msg)
    azure_host = (parts.hostname or "").lower().endswith(_AZURE_HOSTS)
    if path and (azure_host or "openai" in path.lower().split("/")):
        msg = (
            f"{what} {base}{parts.path} has a path after the host: drop "
            f"'{parts.path}' and give {base} (the package adds "
            "/openai/deployments/<name>/chat/completions itself)"
        )
        raise ConfigurationError(msg)
    if (
        parts.scheme == "http"
        and not _is_loopback(parts.hostname or "")
        and host not in _warned_plain_http
    ):
        _warned_plain_http.add(host)
        logger.warning(
            "%s %s is plain http to another machine: the key and every prompt cross "
            "the network unencrypted; use https://",
            what,
            base,
        )


def shown_url(url: str) -> str:
    """``url`` without its user's password (for messages and reprs); a path unchanged.

    Read without trusting the URL to be well formed: whatever comes before the last
    ``@`` of a URL is its user part, so a password holding an unescaped ``/``, ``?``
    or ``#`` is hidden too. The user name is kept, the query dropped (but for
    ``?fallback=local``, which holds no secret).

    Examples
    --------
    >>> shown_url("redis://:s3cret@cache.example:6380/2")
    'redis://cache.example:6380/2'
    >>> shown_url("redis://user:s3cret@h/0?fallback=local")
    'redis://user@h/0?fallback=local'
    >>> shown_url("redis://:p/ss#w?rd@h/0")
    'redis://h/0'
    >>> shown_url("cache/answers.sqlite")
    'cache/answers.sqlite'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    user = ""
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        name, colon, _ = userinfo.partition(":")
        user = f"{name}@" if colon and name else ""
    cut = min((i for i in map(rest.find, "?#") if i >= 0), default=len(rest))
    query = rest[cut:]
    shown = f"{scheme}://{user}{rest[:cut]}"
    return shown + query if query == "?fallback=local" else shown


def url_secrets(url: str) -> list[str]:
    """The secrets a URL holds in its user part, as written and percent-decoded.

    Longest first (replace them in this order). See :func:`scrub`.
    """
    _, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    name, colon, password = userinfo.partition(":")
    found = {userinfo, unquote(userinfo)}
    found |= {password, unquote(password)} if colon else {name, unquote(name)}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` (as written, or decoded) as ``***``.

    Examples
    --------
    >>> scrub("AUTH failed for S3cr@t", "redis://:S3cr%40t@h/0")
    'AUTH failed for ***'
    """
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost" or hostname.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def default_credential() -> Any:
    """azure-identity's ``DefaultAzureCredential`` when the extra is installed, else None."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return None
    return DefaultAzureCredential()


def _read_dotenv(path: str | os.PathLike[str] | None) -> dict[str, str | None]:
    if path is None:
        found = find_dotenv(usecwd=True)
        if not found:
            return {}
        path = found
    if not Path(path).is_file():
        return {}
    return dict(dotenv_values(path))
