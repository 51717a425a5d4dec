"""One option set: every entry point and the CLI take every option, with one default."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer.core
import typer.main

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.options import (
    BODY_FIELDS,
    RESERVED_FIELDS,
    ChatBodyDict,
    ChatOptions,
    ChatOptionsDict,
)

OPTIONS = {f.name: f for f in dataclasses.fields(ChatOptions)}


def _keywords(func: object) -> dict[str, inspect.Parameter]:
    return {
        name: p
        for name, p in inspect.signature(func).parameters.items()  # type: ignore[arg-type]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


@pytest.mark.parametrize(
    "entry",
    [
        pac.complete,
        pac.complete_many,
        pac.Completer,
        pl.col("x").chat.complete,
        pac.plan,
    ],
    ids=["complete", "complete_many", "Completer", "namespace", "plan"],
)
def test_every_entry_point_takes_every_option_with_its_default(entry: object) -> None:
    keywords = _keywords(entry)
    for name, f in OPTIONS.items():
        assert name in keywords, name
        assert keywords[name].default == f.default, name
    doc = inspect.getdoc(entry) or ""
    for name, f in OPTIONS.items():
        assert f"{name} : " in doc and f.metadata["doc"] in doc, name


def _flags(command_name: str) -> dict[str, Any]:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    return {p.name: p for p in command.commands[command_name].params}


@pytest.mark.parametrize("command", ["run", "plan"])
def test_every_option_is_a_flag_with_the_same_default(command: str) -> None:
    flags = _flags(command)
    for name, f in OPTIONS.items():
        assert name in flags, f"--{name.replace('_', '-')} is missing"
        assert flags[name].default == f.default, name
        assert f"--{name.replace('_', '-')}" in flags[name].opts, name


def test_namespace_and_complete_have_one_signature() -> None:
    a = inspect.signature(pac.complete).parameters
    b = inspect.signature(pl.col("x").chat.complete).parameters
    assert list(a)[1:] == list(b)


def test_body_fields_are_the_sdks() -> None:
    from openai.types.chat import completion_create_params

    sdk = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    assert sdk - RESERVED_FIELDS == BODY_FIELDS - {"data_sources"}


def test_the_typed_keywords_are_the_options_and_the_body_fields() -> None:
    keys = ChatOptionsDict.__optional_keys__
    assert not ChatOptionsDict.__required_keys__
    assert keys == {*OPTIONS, *BODY_FIELDS, "extra_body"}
    assert ChatBodyDict.__optional_keys__ == {*BODY_FIELDS, "extra_body"}
    for name, f in OPTIONS.items():  # each option with the dataclass's type
        hint = ChatOptionsDict.__annotations__[name]
        assert hint.__forward_arg__ == f.type, name


def test_every_entry_point_types_its_keywords() -> None:
    import polars_azurechat.ray as pac_ray
    from polars_azurechat.namespace import ChatNamespace

    for func in (
        pac.complete,
        pac.complete_many,
        pac.Completer.__init__,
        ChatNamespace.complete,
        pac.plan,
        pac_ray.complete,
    ):
        assert func.__annotations__["params"] == "Unpack[ChatOptionsDict]", func


SNIPPET = """
import polars_azurechat as pac

pac.complete("q", max_token=20)
pac.complete("q", max_concurrency="8")
reveal_type(pac.complete_many(["q"], output="struct", max_tokens=5))
reveal_type(pac.complete_many(["q"], temperature=0.2, stop=["\\n"]))
pac.Completer(cache="answers.sqlite", seed=1, response_format={"type": "json_object"})
"""


@pytest.mark.slow  # 10-30 s with a cold mypy cache, 1 s after
def test_a_type_checker_flags_a_misspelt_option_and_a_wrong_type(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    cache_dir = cache.mkdir("mypy") if cache is not None else tmp_path / "mypy"
    # in a process of its own: mypy retunes the garbage collector of the process
    # it runs in (gc.set_threshold, gc.freeze), which would change the later tests
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(cache_dir),
            snippet,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ".py:" in line]
    assert lines == [
        'error: Unexpected keyword argument "max_token" for "complete"; '
        'did you mean "max_tokens"?  [call-arg]',
        'note: "complete" defined in "polars_azurechat.functions"',
        'error: Argument "max_concurrency" to "complete" has incompatible type '
        '"str"; expected "int"  [arg-type]',
        'note: Revealed type is "list[dict[str, Any] | None]"',
        'note: Revealed type is "list[str | None]"',
    ], out


@pytest.mark.parametrize(
    ("keyword", "hint"),
    [
        ("max_token", "max_tokens"),
        ("rate_limiter", "limiter"),
        ("temprature", "temperature"),
    ],
)
def test_unknown_keyword_is_refused_before_any_request(
    emulator: Emulator, keyword: str, hint: str | None
) -> None:
    kw: dict[str, Any] = {keyword: 20}
    with pytest.raises(TypeError, match=f"unknown keyword '{keyword}'") as info:
        pac.complete("q", **kw)
    if hint:
        assert f"did you mean '{hint}'" in str(info.value)
    assert "extra_body" in str(info.value)
    assert emulator.stats()["requests"] == 0


def test_extra_body_is_sent_at_the_top_level(emulator: Emulator) -> None:
    with pac.Completer(max_tokens=5, extra_body={"my_field": 1}) as job:
        assert job.params == {"max_tokens": 5, "my_field": 1}
        assert job.run(["What is 1 + 1?"]) == ["2"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"output": "json"}, "output must be 'content' or 'struct'"),
        ({"timeout_s": -1}, "timeout_s must be a positive number"),
        ({"on_error": "skip"}, "on_error must be 'null' or 'raise'"),
        ({"messages": []}, "messages cannot be passed"),
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"temperature": 3.5}, "temperature must be from 0 to 2"),
        ({"temperature": "hot"}, "temperature must be a number from 0 to 2"),
        ({"top_p": True}, "top_p must be a number from 0 to 1"),
        ({"top_logprobs": 25}, "top_logprobs must be from 0 to 20"),
        ({"top_logprobs": 2.5}, "top_logprobs must be an integer from 0 to 20"),
        ({"presence_penalty": -3}, "presence_penalty must be from -2 to 2"),
        ({"logprobs": "yes"}, "logprobs must be True or False"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs=True"),
        (
            {"mode": "batch", "cache": "c.sqlite", "repair": "teach"},
            "in mode='batch' it needs batch_fallback='online'",
        ),
    ],
)
def test_bad_values_name_the_option(
    emulator: Emulator, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        pac.complete("q", **kw)
    assert emulator.stats()["requests"] == 0


def test_a_400_about_a_job_wide_field_stops_the_run(emulator: Emulator) -> None:
    # a value the client does not check (seed must be an integer): Azure's 400 names
    # the field, which every request of the job sends: the first stops the run
    df = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(200)]})
    with pytest.raises(pac.UnsupportedParameterError, match="refuses 'seed'"):
        df.select(pac.complete("q", seed="abc", max_concurrency=4))  # type: ignore[arg-type]
    assert emulator.stats()["statuses"] == {"400": emulator.stats()["requests"]}
    assert emulator.stats()["requests"] <= 8


def test_options_object_and_keywords_combine(emulator: Emulator) -> None:
    base = ChatOptions(max_concurrency=3, output="struct")
    with pac.Completer(options=base, max_attempts=2, max_tokens=9) as job:
        assert job.options == base.replace(max_attempts=2)
        assert job.params == {"max_tokens": 9}


def test_every_emulator_setting_is_an_emulator_flag() -> None:
    from polars_azurechat.emulator import EmulatorSettings

    flags = _flags("emulator")
    for f in dataclasses.fields(EmulatorSettings):
        if f.name in {"deployments", "clock"}:  # Python objects only
            continue
        assert f.name in flags, f.name
        assert flags[f.name].default == f.default, f.name
        assert flags[f.name].help, f.name
