from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat.config import DEFAULT_API_VERSION, ChatConfig


def test_argument_beats_environment_beats_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "AZURE_OPENAI_ENDPOINT=http://dotenv.example\n"
        "AZURE_OPENAI_API_KEY=dotenv-key\n"
        "OPENAI_API_VERSION=2099-01-01\n"
        "AZURE_OPENAI_DEPLOYMENT=dotenv-dep\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = ChatConfig.from_env()
    assert (cfg.azure_endpoint, cfg.api_key, cfg.api_version, cfg.deployment) == (
        "http://dotenv.example",
        "dotenv-key",
        "2099-01-01",
        "dotenv-dep",
    )
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://env.example/")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "env-key")
    cfg = ChatConfig.from_env()
    assert (cfg.azure_endpoint, cfg.api_key, cfg.deployment) == (
        "http://env.example",
        "env-key",
        "dotenv-dep",
    )
    cfg = ChatConfig.from_env(azure_endpoint="http://arg.example", api_key="arg-key")
    assert (cfg.azure_endpoint, cfg.api_key) == ("http://arg.example", "arg-key")
    import os

    assert "AZURE_OPENAI_DEPLOYMENT" not in os.environ  # .env never leaks into environ


def test_explicit_dotenv_path(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text(
        "AZURE_OPENAI_ENDPOINT=http://x.example\nAZURE_OPENAI_AD_TOKEN=tok\n"
    )
    cfg = ChatConfig.from_env(dotenv_path=env_file)
    assert cfg.api_key is None and cfg.azure_ad_token == "tok"
    assert cfg.auth_headers() == {"Authorization": "Bearer tok"}


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "AZURE_OPENAI_ENDPOINT"),
        ({"AZURE_OPENAI_ENDPOINT": "http://x.example"}, "AZURE_OPENAI_API_KEY"),
    ],
)
def test_missing_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # the extra is absent
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(pac.ConfigurationError, match=missing):
        ChatConfig.from_env()
    with pytest.raises(pac.ConfigurationError, match=missing):
        pl.col("q").chat.complete()  # fails when the expression is built


def test_missing_deployment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://x.example")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    with pytest.raises(pac.ConfigurationError, match="AZURE_OPENAI_DEPLOYMENT"):
        pac.complete("q")


def test_defaults_and_validation() -> None:
    assert ChatConfig(
        azure_endpoint="https://r.openai.azure.com", api_key="k"
    ).api_version == (DEFAULT_API_VERSION)
    with pytest.raises(pac.ConfigurationError, match="http"):
        ChatConfig(azure_endpoint="r.openai.azure.com", api_key="k")
    with pytest.raises(pac.ConfigurationError, match="mutually exclusive"):
        ChatConfig(azure_endpoint="https://r", api_key="k", azure_ad_token="t")


def test_secrets_stay_out_of_repr() -> None:
    cfg = ChatConfig(azure_endpoint="https://r.example", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(cfg)
    assert "sk-very-secret" not in str(cfg)
    assert cfg.host == "r.example"


def test_without_a_key_the_azure_extra_gives_default_azure_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.identity import DefaultAzureCredential

    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://x.example")
    cfg = ChatConfig.from_env()
    assert isinstance(cfg.credential, DefaultAzureCredential)
    assert cfg.api_key is None and "credential=<DefaultAzureCredential>" in repr(cfg)


def test_without_the_extra_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://x.example")
    with pytest.raises(pac.ConfigurationError, match=r"polars-azurechat\[azure\]"):
        ChatConfig.from_env()


def test_one_credential_only() -> None:
    with pytest.raises(pac.ConfigurationError, match="mutually exclusive"):
        ChatConfig(
            azure_endpoint="http://x", api_key="k", azure_ad_token_provider=lambda: "t"
        )
    with pytest.raises(pac.ConfigurationError, match="TokenCredential"):
        ChatConfig(azure_endpoint="http://x", credential=object())


def test_the_v1_api_from_base_url_or_api_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polars_azurechat.errors import ConfigurationError

    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    v1 = ChatConfig(base_url="https://r.openai.azure.com/openai/v1/", api_key="k")
    assert (v1.azure_endpoint, v1.api_version, v1.surface) == (
        "https://r.openai.azure.com",
        "v1",
        "v1",
    )
    same = ChatConfig(
        azure_endpoint="https://r.openai.azure.com", api_version="v1", api_key="k"
    )
    assert same == v1
    assert (
        ChatConfig(azure_endpoint="https://r.openai.azure.com", api_key="k").surface
        == "classic"
    )
    # the environment: OPENAI_BASE_URL alone is the v1 API
    monkeypatch.setenv("OPENAI_BASE_URL", "https://r.openai.azure.com/openai/v1")
    assert ChatConfig.from_env(api_key="k") == v1
    # ... but an Azure endpoint wins over it (it is often OpenAI's own API's URL)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com")
    assert ChatConfig.from_env(api_key="k").surface == "classic"
    with pytest.raises(ConfigurationError, match="not an Azure OpenAI v1 URL"):
        ChatConfig(base_url="https://api.openai.com/v1", api_key="k")
    with pytest.raises(ConfigurationError, match="name different resources"):
        ChatConfig(
            azure_endpoint="https://other.openai.azure.com",
            base_url="https://r.openai.azure.com/openai/v1/",
            api_key="k",
        )
    # the v1 URL given as the endpoint: the message says where it goes
    with pytest.raises(ConfigurationError, match="pass it as base_url="):
        ChatConfig(azure_endpoint="https://r.openai.azure.com/openai/v1/", api_key="k")
    # a password in a base URL is refused without being shown
    with pytest.raises(ConfigurationError) as info:
        ChatConfig(
            base_url="https://u:S3cret@r.openai.azure.com/openai/v1", api_key="k"
        )
    assert "S3cret" not in str(info.value)
