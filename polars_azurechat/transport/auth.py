"""The credential a request carries: a key, or an Entra ID token kept fresh.

Not meant for outside use. :class:`KeyAuth` sends ``api-key``. :class:`TokenAuth` sends
``Authorization: Bearer`` with a token from a provider (a callable, as the openai SDK's
``azure_ad_token_provider`` and azure-identity's ``get_bearer_token_provider``) or an
azure-identity credential (``get_token(scope)``, sync or async). Tokens are fetched off
the event loop (a slow credential never stalls requests in flight), cached, refreshed
before they expire (from the credential's ``expires_on``, or a JWT's ``exp``), and
refreshed at once when the server answers 401 to a token that may have expired. Tokens
never appear in logs, errors or reprs. A credential that gives no token is one
:class:`~polars_azurechat.errors.AuthenticationError` of one line, naming the
credentials it tried (a chain such as ``DefaultAzureCredential`` names each); it is
not asked again for :data:`FAILED_FOR_S`, so the rows waiting on it fail at once.
While the package asks a chain, azure-identity's own multi-line WARNING that the chain
failed is dropped (it says what the error says; DEBUG logging keeps its full text).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from polars_azurechat.config import ENV_API_KEY
from polars_azurechat.errors import AuthenticationError

__all__ = ["SCOPE", "KeyAuth", "TokenAuth"]

logger = logging.getLogger(__name__)

#: The Entra ID scope of Azure OpenAI.
SCOPE = "https://cognitiveservices.azure.com/.default"
#: Refresh this long before expiry (or at half the lifetime, for short-lived tokens).
REFRESH_BEFORE_S = 300.0
#: A token whose lifetime is unknown is fetched again after this long.
UNKNOWN_LIFETIME_S = 600.0
#: After a credential failed to give a first token, its error is given again for this
#: long instead of asking it again (each try of a chain may take seconds).
FAILED_FOR_S = 30.0

#: True while this package asks a credential for a token (asyncio.to_thread copies it
#: into the worker thread that asks).
_ASKING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "polars_azurechat_asking", default=False
)


class _SaidByOurError(logging.Filter):
    """Drops azure-identity's WARNING that a chain failed, when this package asked.

    The package raises one line naming the credentials tried instead, and logs the
    chain's full message at DEBUG. Records logged for anyone else's requests pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ASKING.get() and record.levelno == logging.WARNING)


for _name in (
    "azure.identity._credentials.chained",
    "azure.identity.aio._credentials.chained",
):
    logging.getLogger(_name).addFilter(_SaidByOurError())


class KeyAuth:
    """The resource key, sent as ``api-key`` on every request."""

    refreshable = False

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def __repr__(self) -> str:
        return "KeyAuth(***)"

    async def headers(self) -> Mapping[str, str]:
        """The headers to send."""
        return self._headers

    async def refresh(self, stale: Mapping[str, str]) -> bool:
        """Keys do not refresh."""
        return False


class TokenAuth:
    """An Entra ID token from a provider or a credential, kept fresh.

    Parameters
    ----------
    provider
        A callable returning a token string (sync or async), or ``None``.
    credential
        An azure-identity ``TokenCredential`` or ``AsyncTokenCredential``, or ``None``.
    clock
        Wall-clock seconds (``expires_on`` is a UNIX time).
    """

    refreshable = True

    def __init__(
        self,
        *,
        provider: Callable[[], Any] | None = None,
        credential: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (provider is None) == (credential is None):
            msg = "give a token provider or a credential"
            raise ValueError(msg)
        self._provider = provider
        self._credential = credential
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._background: asyncio.Task[None] | None = None
        self._failed: tuple[float, str] | None = None  # when, and the message

    def __repr__(self) -> str:
        source = self._credential if self._credential is not None else self._provider
        return f"TokenAuth({type(source).__name__})"

    async def headers(self) -> Mapping[str, str]:
        """The ``Authorization`` header: the cached token, refreshed when due.

        Before expiry the refresh runs in the background and requests go on with the
        token they have; only a missing or expired token makes a request wait.
        """
        token, now = self._token, self._clock()
        if token is None or now >= self._expires_at:
            token = await self._fetch(stale=token)
        elif now >= self._refresh_at and self._background is None:
            self._background = asyncio.get_running_loop().create_task(
                self._refresh_in_background(token)
            )
        return {"Authorization": f"Bearer {token}"}

    async def _refresh_in_background(self, token: str) -> None:
        try:
            await self._fetch(stale=token)
        except Exception:  # the next request that needs a token retries and raises
            logger.warning("refreshing the Entra ID token failed", exc_info=True)
        finally:
            self._background = None

    async def refresh(self, stale: Mapping[str, str]) -> bool:
        """The server refused the token in ``stale``: fetch a new one (once for all).

        Returns whether a different token is now in force.
        """
        old = stale.get("Authorization", "").removeprefix("Bearer ")
        if old != self._token:
            return True  # another request refreshed it meanwhile
        fresh = await self._fetch(stale=old, force=True)
        return fresh != old

    async def _fetch(self, *, stale: str | None, force: bool = False) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one fetch at a time; the others use its token
            if self._token is not None and self._token != stale:
                return self._token
            if (
                not force
                and self._token is not None
                and self._clock() < self._refresh_at
            ):
                return self._token
            token, expires_on = await self._get_or_fail()
            now = self._clock()
            if expires_on is None:
                expires_on = _jwt_expiry(token)
            lifetime = (
                UNKNOWN_LIFETIME_S if expires_on is None else max(0.0, expires_on - now)
            )
            self._refresh_at = now + max(
                0.0, lifetime - min(REFRESH_BEFORE_S, lifetime / 2)
            )
            self._expires_at = now + lifetime
            self._token = token
            logger.debug("Entra ID token fetched (valid %.0f s)", lifetime)
            return token

    async def _get_or_fail(self) -> tuple[str, float | None]:
        """:meth:`_get`, a failure made one :class:`AuthenticationError` (remembered)."""
        failed = self._failed
        if failed is not None and self._clock() < failed[0] + FAILED_FOR_S:
            raise AuthenticationError(failed[1])
        asking = _ASKING.set(True)
        try:
            got = await self._get()
        except Exception as exc:  # noqa: BLE001 - any credential failure, one message
            source = (
                self._credential if self._credential is not None else self._provider
            )
            error = credential_error(source, exc)
            logger.debug("%s; the credential said: %s", error, exc)
            if self._token is None:  # no token yet: the next rows fail at once
                self._failed = (self._clock(), str(error))
            raise error from None
        finally:
            _ASKING.reset(asking)
        self._failed = None
        return got

    async def _get(self) -> tuple[str, float | None]:
        """A token and its expiry (UNIX time, or None), without blocking the loop."""
        if self._credential is not None:
            get_token = self._credential.get_token
            if inspect.iscoroutinefunction(get_token):
                access = await get_token(SCOPE)
            else:
                access = await asyncio.to_thread(get_token, SCOPE)
            return str(access.token), float(access.expires_on)
        provider = self._provider
        assert provider is not None  # noqa: S101 - one of the two is set
        if inspect.iscoroutinefunction(provider):
            token = await provider()
        else:
            token = await asyncio.to_thread(provider)
            if isinstance(token, Awaitable):
                token = await token
        return str(token), None


def credential_error(source: Any, exc: BaseException) -> AuthenticationError:
    """One line saying that ``source`` gave no token, and which credentials it tried.

    A chain (azure-identity's ``DefaultAzureCredential``, ``ChainedTokenCredential``)
    names each credential of its ``credentials``; the credential's own words are cut
    to their first line.

    Parameters
    ----------
    source
        The credential, or the token provider.
    exc
        What it raised.

    Returns
    -------
    AuthenticationError
        With ``status_code`` 0 (no request was sent).
    """
    name = getattr(source, "__name__", None) or type(source).__name__
    chain = getattr(source, "credentials", None)
    tried = [type(c).__name__ for c in chain] if isinstance(chain, list | tuple) else []
    said = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if len(said) > 200:
        said = said[:199] + "…"
    if tried:
        what = f"{name} tried {', '.join(tried)} and none gave one"
        fix = (
            "make one of them work (e.g. 'az login', a managed identity, or "
            "AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET)"
        )
    else:
        has_get_token = callable(getattr(source, "get_token", None))
        kind = "credential" if has_get_token else "token provider"
        what = f"the {kind} {name} failed ({type(exc).__name__}: {said})"
        fix = f"fix the {kind}"
    return AuthenticationError(
        f"no Entra ID token, so no request was sent: {what}. Set {ENV_API_KEY} to "
        f"use a key instead, or {fix} (DEBUG logging shows what it said)"
    )


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (read, not verified), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        exp = json.loads(base64.urlsafe_b64decode(payload)).get("exp")
    except (ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None
