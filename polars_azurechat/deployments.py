"""Several deployments serving one job: :class:`Deployment` and the TOML file that lists them.

A job given ``deployments=[...]`` sends each request to one of them: the lowest
``priority`` tier first (provisioned throughput, say), the next tier when every
deployment of the first is out of quota, cooling down after a 429, or down. Each
deployment has its own quota (given or learned from its headers), its own 429
cooldown and its own circuit breaker. The pool serves one model: an answer from any of
its deployments is the same answer for the cache and for deduplication.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from polars_azurechat.config import ChatConfig, check_deployment_name, check_endpoint
from polars_azurechat.errors import ConfigurationError

__all__ = ["Deployment", "load_deployments"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deployment:
    """One deployment of a pool: where it is, how to reach it, its quota and its tier.

    Parameters
    ----------
    name
        The deployment name, as in the Azure portal (letters, digits, ``-``, ``_``
        and ``.``).
    endpoint
        Its resource endpoint (``None``: the job's, from its config or environment),
        checked as :class:`~polars_azurechat.ChatConfig` checks ``azure_endpoint``.
    api_key, credential, azure_ad_token_provider
        How to authenticate to it, as in :class:`~polars_azurechat.ChatConfig`
        (``None`` for all three: the job's credential). Never shown in a repr.
    api_version
        The API version (``None``: the job's).
    requests_per_minute, tokens_per_minute
        Its quota, if known; otherwise learned from its rate-limit headers.
    priority
        Its tier: tier 0 is used first, then 1, and so on.

    Examples
    --------
    >>> from polars_azurechat import Deployment
    >>> Deployment(name="gpt-4o-ptu", requests_per_minute=1200)
    Deployment(name='gpt-4o-ptu', endpoint=None, api_version=None, requests_per_minute=1200, tokens_per_minute=None, priority=0)
    """

    name: str
    endpoint: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    credential: Any = dataclasses.field(default=None, repr=False)
    azure_ad_token_provider: Callable[[], str] | None = dataclasses.field(
        default=None, repr=False
    )
    api_version: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            msg = f"Deployment name must be a non-empty string, not {self.name!r}"
            raise ValueError(msg)
        check_deployment_name(self.name, "Deployment name")
        if self.endpoint is not None:
            check_endpoint(self.endpoint, f"Deployment {self.name!r}: endpoint")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            msg = f"Deployment {self.name!r}: priority must be an int, not {self.priority!r}"
            raise TypeError(msg)
        for field in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not value > 0):
                msg = (
                    f"Deployment {self.name!r}: {field} must be positive, not {value!r}"
                )
                raise ValueError(msg)
        secrets = [
            n
            for n in ("api_key", "credential", "azure_ad_token_provider")
            if getattr(self, n) is not None
        ]
        if len(secrets) > 1:
            msg = (
                f"Deployment {self.name!r}: give one of api_key, credential and "
                f"azure_ad_token_provider, not {' and '.join(secrets)}"
            )
            raise ValueError(msg)

    @property
    def has_credential(self) -> bool:
        """Whether it brings its own credential (else it uses the job's)."""
        return (
            self.api_key is not None
            or self.credential is not None
            or self.azure_ad_token_provider is not None
        )

    def config(self, base: ChatConfig | None) -> ChatConfig:
        """Its own configuration: its fields, the job's ``base`` for the others."""
        if base is None and (self.endpoint is None or not self.has_credential):
            base = ChatConfig.from_env(deployment=self.name)
        endpoint = self.endpoint or (base.azure_endpoint if base else None)
        if self.has_credential or base is None:
            secrets: dict[str, Any] = {
                "api_key": self.api_key,
                "credential": self.credential,
                "azure_ad_token_provider": self.azure_ad_token_provider,
            }
        else:
            secrets = {
                "api_key": base.api_key,
                "azure_ad_token": base.azure_ad_token,
                "credential": base.credential,
                "azure_ad_token_provider": base.azure_ad_token_provider,
            }
        kw: dict[str, Any] = {"azure_endpoint": endpoint, "deployment": self.name}
        if self.api_version or base is not None:
            kw["api_version"] = self.api_version or (base.api_version if base else None)
        return ChatConfig(**kw, **secrets)


#: Keys a ``[[deployments]]`` table of a TOML file may hold.
_TOML_KEYS = {
    "name",
    "endpoint",
    "api_key_env",
    "auth",
    "api_version",
    "requests_per_minute",
    "tokens_per_minute",
    "priority",
}


def load_deployments(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> tuple[Deployment, ...]:
    """Read a pool of deployments from a TOML file.

    Each ``[[deployments]]`` table names one deployment. Keys are not written in the
    file: ``api_key_env`` names the environment variable holding the deployment's key,
    and ``auth = "entra"`` uses Microsoft Entra ID (``DefaultAzureCredential``, from the
    ``azure`` extra). Without either, the deployment uses the job's credential.

    .. code-block:: toml

        [[deployments]]
        name = "gpt-4o-ptu"                 # provisioned throughput: used first
        endpoint = "https://east.openai.azure.com"
        api_key_env = "AZURE_OPENAI_API_KEY_EAST"
        requests_per_minute = 1200
        priority = 0

        [[deployments]]
        name = "gpt-4o-paygo"               # pay-as-you-go: when the first is full
        auth = "entra"
        priority = 1

    Parameters
    ----------
    path
        The TOML file.
    environ
        Where ``api_key_env`` variables are read (default: ``os.environ``).

    Returns
    -------
    tuple of Deployment

    Raises
    ------
    ConfigurationError
        The file is missing or not TOML, a table has an unknown key or a wrong value,
        or an ``api_key_env`` variable is unset; the message names the file and table.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from polars_azurechat import load_deployments
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "pool.toml"
    >>> _ = f.write_text(
    ...     "[[deployments]]"
    ...     + chr(10)
    ...     + 'name = "a"'
    ...     + chr(10)
    ...     + "[[deployments]]"
    ...     + chr(10)
    ...     + 'name = "b"'
    ...     + chr(10)
    ...     + "priority = 1"
    ... )
    >>> [(d.name, d.priority) for d in load_deployments(f)]
    [('a', 0), ('b', 1)]
    """
    env = os.environ if environ is None else environ
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"deployments file {str(file)!r} does not exist"
        raise ConfigurationError(msg) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"deployments file {str(file)!r} cannot be read as TOML: {exc}"
        raise ConfigurationError(msg) from None
    tables = data.get("deployments")
    unknown_top = sorted(set(data) - {"deployments"})
    if unknown_top or not isinstance(tables, list) or not tables:
        msg = (
            f"deployments file {str(file)!r} must hold one or more [[deployments]] "
            "tables"
            + (f" (unknown keys: {', '.join(unknown_top)})" if unknown_top else "")
        )
        raise ConfigurationError(msg)
    return tuple(_from_table(t, i, file, env) for i, t in enumerate(tables))


def _from_table(
    table: Mapping[str, Any], index: int, file: Path, env: Mapping[str, str]
) -> Deployment:
    where = f"{str(file)!r}, [[deployments]] #{index + 1}"
    unknown = sorted(set(table) - _TOML_KEYS)
    if unknown:
        msg = (
            f"{where}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_TOML_KEYS))})"
        )
        raise ConfigurationError(msg)
    kw = {k: v for k, v in table.items() if k not in ("api_key_env", "auth")}
    var = table.get("api_key_env")
    auth = table.get("auth")
    if var is not None and auth is not None:
        msg = f"{where}: give api_key_env or auth, not both"
        raise ConfigurationError(msg)
    if var is not None:
        key = env.get(str(var))
        if not key:
            msg = f"{where}: the environment variable {var} (api_key_env) is not set"
            raise ConfigurationError(msg)
        kw["api_key"] = key
    elif auth is not None:
        if auth != "entra":
            msg = f"{where}: auth must be 'entra', not {auth!r}"
            raise ConfigurationError(msg)
        from polars_azurechat.config import default_credential

        credential = default_credential()
        if credential is None:
            msg = (
                f"{where}: auth = 'entra' needs azure-identity: "
                "pip install 'polars-azurechat[azure]'"
            )
            raise ConfigurationError(msg)
        kw["credential"] = credential
    try:
        return Deployment(**kw)
    except (TypeError, ValueError) as exc:
        msg = f"{where}: {exc}"
        raise ConfigurationError(msg) from None


def as_deployments(value: Iterable[Any] | None) -> tuple[Deployment, ...] | None:
    """Validate the ``deployments`` option: Deployments (or dicts of their fields)."""
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        msg = (
            "deployments must be a list of polars_azurechat.Deployment, not "
            f"{type(value).__name__}"
        )
        raise TypeError(msg)
    out = []
    for item in value:
        if isinstance(item, Mapping):
            item = Deployment(**item)
        if not isinstance(item, Deployment):
            msg = (
                "deployments must hold polars_azurechat.Deployment items, not "
                f"{type(item).__name__}"
            )
            raise TypeError(msg)
        out.append(item)
    if not out:
        msg = "deployments must name at least one deployment"
        raise ValueError(msg)
    names = [(d.endpoint, d.name) for d in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        msg = f"deployment {dup[1]!r} is listed twice"
        raise ValueError(msg)
    return tuple(out)
