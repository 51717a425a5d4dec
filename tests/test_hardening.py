"""Issue 23, hardening: no key leaves for another host, no secret shows, no bad endpoint.

Redirects are never followed (online and batch mode), a Redis password never shows
(reprs, errors, percent-encoded or not), a credential that gives no token is one line
naming what it tried, and endpoints and deployment names are checked before any
request. Against the emulator over real HTTP on 127.0.0.1; a redirect comes from a
tiny server of the test's own that points at the emulator under another host name.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat._types import ChatRequest
from polars_azurechat.batch.api import Api
from polars_azurechat.batch.mode import batch_client
from polars_azurechat.cli import app
from polars_azurechat.config import ChatConfig, scrub, shown_url
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.errors import CacheError, LimiterError
from polars_azurechat.store.redis import RedisCache
from polars_azurechat.testing import MemoryResponse, MemoryTransport
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport

from ._redis import redis_server

ROWS = [f"What is {i} + 1?" for i in range(12)]
#: What a redirect's location carries after the host: never shown.
LOCATION_SECRET = "sig=LOCATION-QUERY-SECRET"


class Redirector:
    """A server on 127.0.0.1 answering every request with one redirect.

    The location is ``target`` (a scheme and host) plus the request's own path and
    :data:`LOCATION_SECRET` as a query. It counts the requests it got, by path.
    """

    def __init__(self, status: int, target: str) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _redirect(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.paths.append(self.path.split("?", 1)[0])
                self.send_response(status)
                location = f"{target}{self.path.split('?', 1)[0]}?{LOCATION_SECRET}"
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[Redirector]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join()


# -- 1. redirects ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308])
def test_an_online_redirect_is_not_followed_and_names_the_host_only(
    emulator: Emulator, status: int
) -> None:
    # the emulator, reached under another name: where a redirect would take the key
    elsewhere = f"http://localhost:{emulator.port}"
    with Redirector(status, elsewhere).running() as redirector:
        cfg = ChatConfig(
            azure_endpoint=redirector.url,
            api_key=emulator.api_key,
            deployment="gpt-4o-mini",
        )
        with (
            pac.Completer(config=cfg, max_tokens=10, progress=False) as job,
            pytest.raises(pac.RedirectError) as info,
        ):
            job.run(ROWS)
    err = info.value
    assert err.status_code == status
    assert err.location_host == f"localhost:{emulator.port}"
    assert f"redirect to localhost:{emulator.port}" in str(err)
    assert "LOCATION-QUERY-SECRET" not in str(err) + repr(err.body)
    assert "/openai" not in str(err)
    assert isinstance(err, pac.NotFoundError)  # the run stops, as for a wrong endpoint
    # nothing reached the other host; each row asked at most once (not retried)
    assert emulator.stats()["requests"] == 0
    assert emulator.stats()["auth"] == {"key": 0, "bearer": 0}
    assert 1 <= len(redirector.paths) <= len(ROWS)
    assert set(redirector.paths) == {"/openai/deployments/gpt-4o-mini/chat/completions"}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_retried_and_stops_the_run(status: int) -> None:
    transport = MemoryTransport(
        lambda request: MemoryResponse(
            status,
            content=b"<a href='https://evil.example/x?token=t'>moved</a>",
            headers={"Location": "https://evil.example:8443/x?token=t"},
        )
    )
    engine = ChatEngine(transport, params={"max_tokens": 5}, max_concurrency=1)
    try:
        rows = [ChatRequest([{"role": "user", "content": q}]) for q in ROWS[:4]]
        with pytest.raises(pac.RedirectError, match=r"redirect to evil\.example:8443"):
            engine.run(rows)
    finally:
        engine.close()
    assert len(transport.requests) == 1  # not retried, and the run stopped


def test_batch_mode_does_not_follow_a_redirect_with_the_prompts(
    emulator: Emulator, tmp_path: Path
) -> None:
    elsewhere = f"http://localhost:{emulator.port}"
    with Redirector(307, elsewhere).running() as redirector:
        cfg = ChatConfig(
            azure_endpoint=redirector.url,
            api_key=emulator.api_key,
            deployment="gpt-4o-mini-batch",
        )
        with (
            pac.Completer(
                config=cfg,
                cache=str(tmp_path / "c.sqlite"),
                mode="batch",
                max_tokens=10,
                progress=False,
            ) as job,
            pytest.raises(pac.RedirectError) as info,
        ):
            job.run(ROWS)
        # a redirect on a look at a file or a batch is not "it is gone" (a 404)
        api = Api(batch_client(cfg), "gpt-4o-mini-batch")
        looks: list[Callable[[], Any]] = [
            lambda: api.file("file-1"),
            lambda: api.batch("batch_1"),
        ]
        for look in looks:
            with pytest.raises(pac.RedirectError):
                look()
    assert info.value.location_host == f"localhost:{emulator.port}"
    assert "LOCATION-QUERY-SECRET" not in str(info.value)
    batch = emulator.stats()["batch"]
    assert batch["files_uploaded"] == 0  # the prompts never reached the other host
    assert batch["batches_created"] == 0
    # the upload asked once (not retried), then the two looks
    assert redirector.paths == [
        "/openai/files",
        "/openai/files/file-1",
        "/openai/batches/batch_1",
    ]


# -- 5. the Redis password ------------------------------------------------------------

PASSWORD = "S3cret-pw"


def test_redis_passwords_stay_out_of_the_options_repr() -> None:
    opts = pac.ChatOptions(
        limiter=f"redis://:{PASSWORD}@cache.example:6380/0?fallback=local",
        cache=f"rediss://user:{PASSWORD}@cache.example/1",
    )
    text = repr(opts)
    assert PASSWORD not in text
    assert "limiter='redis://cache.example:6380/0?fallback=local'" in text
    assert "cache='rediss://user@cache.example/1'" in text
    assert "max_concurrency=64" in text  # the other options are shown as before
    # a password written where the user name goes is hidden too
    assert PASSWORD not in repr(pac.ChatOptions(limiter=f"redis://{PASSWORD}@h/0"))
    sqlite = pac.ChatOptions(cache="answers.sqlite")
    assert "cache='answers.sqlite'" in repr(sqlite)


def test_a_mistyped_limiter_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="redis:// URL") as info:
        pac.ChatOptions(limiter=f"rdis://:{PASSWORD}@h/0")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:S3cr/et@127.0.0.1:1/0",  # an unescaped '/' ends the host early
        "redis://:S3cr?et@127.0.0.1:1/0",
        "redis://:S3cr#et@127.0.0.1:1/0",
        "redis://:S3cret@127.0.0.1:port/0",
    ],
)
def test_a_malformed_redis_url_is_refused_without_any_piece_of_its_password(
    url: str,
) -> None:
    with pytest.raises(CacheError, match="percent-encoded") as info:
        RedisCache(url)
    assert "S3cr" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    with pytest.raises(LimiterError, match="percent-encoded") as limiter_info:
        pac.Completer(
            config=ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="k"),
            deployment="d",
            limiter=url,
        )
    assert "S3cr" not in str(limiter_info.value)


def test_scrub_hides_a_password_as_written_and_percent_decoded() -> None:
    url = "redis://user:p%40ss%2Fw0rd@h/0"
    text = "user p@ss/w0rd wrong; sent p%40ss%2Fw0rd"
    assert scrub(text, url) == "user *** wrong; sent ***"
    assert shown_url(url) == "redis://user@h/0"


@pytest.mark.slow
def test_redis_errors_never_show_the_password_decoded() -> None:
    # a password-protected server, and a URL whose (wrong) password is percent-encoded
    with redis_server() as url:
        import redis

        host = url.removeprefix("redis://")
        admin = redis.Redis.from_url(url)
        admin.config_set("requirepass", "the-right-one")
        admin.close()
        encoded = "redis://:my%3Apass%40word@" + host
        for make in (
            lambda: RedisCache(encoded),
            lambda: pac.Completer(
                config=ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="k"),
                deployment="d",
                limiter=encoded,
            ),
        ):
            with pytest.raises(pac.ConfigurationError) as info:
                make()
            text = str(info.value)
            assert "my:pass@word" not in text
            assert "my%3Apass%40word" not in text
            assert "cannot reach Redis" in text


# -- 7. no key, and a credential that gives no token ----------------------------------


class Chain:
    """A chain of credentials that all fail, as azure-identity's chains are shaped."""

    def __init__(self) -> None:
        self.credentials = (_Unavailable(), _Unavailable())
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        lines = [
            "ChainedTokenCredential failed to retrieve a token from the included "
            "credentials.",
            "Attempted credentials:",
            *(f"\t{type(c).__name__}: unavailable" for c in self.credentials),
            "To mitigate this issue, please refer to the troubleshooting guidelines.",
        ]
        raise ClientAuthenticationError(message="\n".join(lines))


class _Unavailable:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError(message="unavailable")


def test_a_credential_that_gives_no_token_is_one_line_naming_what_it_tried(
    emulator: Emulator,
) -> None:
    chain = Chain()
    cfg = ChatConfig(
        azure_endpoint=emulator.url, credential=chain, deployment="gpt-4o-mini"
    )
    with (
        pac.Completer(config=cfg, max_concurrency=8, progress=False) as job,
        pytest.raises(pac.AuthenticationError) as info,
    ):
        job.run(ROWS)
    text = str(info.value)
    assert "\n" not in text
    assert "Chain tried _Unavailable, _Unavailable and none gave one" in text
    assert "AZURE_OPENAI_API_KEY" in text
    assert info.value.__cause__ is None  # the credential's 10-line story stays out
    assert chain.calls == 1  # asked once for all rows, not once per row
    assert emulator.stats()["requests"] == 0


def test_a_failing_token_provider_is_one_line_too(emulator: Emulator) -> None:
    def fetch_token() -> str:
        raise RuntimeError("no token here\nsecond line")

    cfg = ChatConfig(
        azure_endpoint=emulator.url,
        azure_ad_token_provider=fetch_token,
        deployment="gpt-4o-mini",
    )
    with pytest.raises(pac.AuthenticationError) as info:
        pl.DataFrame({"q": ROWS[:3]}).select(pac.complete("q", config=cfg))
    text = str(info.value).splitlines()[0]
    assert "the token provider fetch_token failed (RuntimeError: no token here)" in text
    assert "second line" not in str(info.value)
    assert emulator.stats()["requests"] == 0


def test_azure_identity_warnings_for_anyone_else_still_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import polars_azurechat.transport.auth  # noqa: F401 - installs the filter

    logging.getLogger("azure.identity._credentials.chained").warning("theirs")
    assert [r.getMessage() for r in caplog.records] == ["theirs"]


@pytest.mark.slow
def test_the_cli_without_a_key_says_in_one_line_which_credentials_failed(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # azure-identity's own DefaultAzureCredential, with nothing to find on this
    # machine: no environment credential, no managed identity, no CLI on PATH
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "dev")  # no network probe
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    src = tmp_path / "in.parquet"
    pl.DataFrame({"q": ROWS}).write_parquet(src)
    result = CliRunner().invoke(
        app, ["run", str(src), str(tmp_path / "out.parquet"), "--column", "q"]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert "DefaultAzureCredential tried" in errors[0]
    assert "AzureCliCredential" in errors[0]
    # azure-identity's own 7-line warning saying the same is not shown
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in warnings if r.name.startswith("azure.identity")]
    assert emulator.stats()["requests"] == 0


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
