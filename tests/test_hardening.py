"""Issue 23, hardening: no key leaves for another host, no secret shows, no bad endpoint.

Redirects are never followed (online and batch mode), a Redis password never shows
(reprs, errors, percent-encoded or not), a credential that gives no token is one line
naming what it tried, and endpoints and deployment names are checked before any
request. Against the emulator over real HTTP on 127.0.0.1; a redirect comes from a
tiny server of the test's own that points at the emulator under another host name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport

ROWS = [f"What is {i} + 1?" for i in range(12)]


# -- 9. endpoints and deployment names --------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "says"),
    [
        ("/openai/", "drop '/openai/'"),
        ("/openai/deployments/gpt-4o-mini/chat/completions", "has a path"),
        ("?x=1", "drop '?x=…'"),
        ("/?api-version=2024-10-21", "drop '?api-version=…'"),
        ("#top", "drop '#…'"),
    ],
)
def test_an_endpoint_with_more_than_a_host_is_refused_before_any_request(
    emulator: Emulator, suffix: str, says: str
) -> None:
    with pytest.raises(pac.ConfigurationError, match="azure_endpoint") as info:
        ChatConfig(azure_endpoint=emulator.url + suffix, api_key=emulator.api_key)
    assert says in str(info.value)
    assert "=1" not in str(info.value) and "2024" not in str(info.value)  # no values
    with pytest.raises(pac.ConfigurationError, match="endpoint"):
        pl.DataFrame({"q": ROWS[:2]}).select(
            pac.complete(
                "q",
                deployments=[
                    pac.Deployment(name="gpt-4o-mini", endpoint=emulator.url + suffix)
                ],
            )
        )
    assert emulator.stats()["requests"] == 0


@pytest.mark.parametrize("userinfo", ["alice:pw-in-url@", "alice:pw/in?url@"])
def test_user_and_password_in_the_endpoint_are_refused_and_never_shown(
    emulator: Emulator, userinfo: str
) -> None:
    endpoint = emulator.url.replace("://", f"://{userinfo}")  # '/' would end a host
    for make in (
        lambda: ChatConfig(azure_endpoint=endpoint, api_key=emulator.api_key),
        lambda: pac.Deployment(name="gpt-4o-mini", endpoint=endpoint),
        lambda: pl.DataFrame({"q": ROWS[:2]}).select(
            pac.complete("q", config=ChatConfig.from_env(azure_endpoint=endpoint))
        ),
    ):
        with pytest.raises(pac.ConfigurationError, match="user name or pass") as e:
            make()
        assert "pw" not in str(e.value)
        assert "alice" not in str(e.value)
        assert f"give http://127.0.0.1:{emulator.port} and" in str(e.value)
    assert emulator.stats()["requests"] == 0


def test_endpoints_that_are_fine() -> None:
    for endpoint in (
        "https://r.openai.azure.com",
        "https://r.openai.azure.com/",
        "https://apim.example.net/my-gateway",  # an API gateway's path prefix
        "http://127.0.0.1:9",
        "http://[::1]:9",
    ):
        assert ChatConfig(azure_endpoint=endpoint, api_key="k").azure_endpoint
    with pytest.raises(pac.ConfigurationError, match="has a path"):
        ChatConfig(azure_endpoint="https://r.openai.azure.com/v1", api_key="k")
    with pytest.raises(pac.ConfigurationError, match="port is not a number"):
        ChatConfig(azure_endpoint="https://r.openai.azure.com:https", api_key="k")


def test_plain_http_to_another_machine_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="polars_azurechat")
    for _ in range(3):
        ChatConfig(azure_endpoint="http://plain.hardening.example", api_key="k")
    ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="k")
    ChatConfig(azure_endpoint="http://localhost:9", api_key="k")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1
    assert "http://plain.hardening.example is plain http" in warned[0]
    assert "unencrypted" in warned[0]


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o-mini/chat/completions?api-version=x#",
        "gpt 4o",
        "../gpt-4o-mini",
        "..",
        "gpt-4o-mini\n",
    ],
)
def test_a_deployment_name_azure_cannot_have_is_refused_before_any_request(
    emulator: Emulator, name: str
) -> None:
    with pytest.raises(pac.ConfigurationError, match="not an Azure deployment name"):
        pl.DataFrame({"q": ROWS[:2]}).select(pac.complete("q", deployment=name))
    with pytest.raises(pac.ConfigurationError, match="not an Azure deployment name"):
        pac.Deployment(name=name)
    with pytest.raises(pac.ConfigurationError, match="not an Azure deployment name"):
        ChatConfig(azure_endpoint=emulator.url, api_key="k", deployment=name)
    assert emulator.stats()["requests"] == 0


def test_the_deployment_name_is_escaped_in_the_url() -> None:
    transport = Transport(
        endpoint="https://r.openai.azure.com/",
        deployment="a b/c?d#e",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": "k"}),
        timeout_s=1,
    )
    assert transport.url == (
        "https://r.openai.azure.com/openai/deployments/a%20b%2Fc%3Fd%23e"
        "/chat/completions"
    )
    assert transport.endpoint_host == "r.openai.azure.com"


def test_a_deployments_file_with_a_bad_name_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "pool.toml"
    f.write_text('[[deployments]]\nname = "gpt-4o/x"\n')
    with pytest.raises(pac.ConfigurationError, match=r"pool.toml.*#1.*gpt-4o/x"):
        pac.load_deployments(f)
