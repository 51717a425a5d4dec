"""The emulator's shared state: counters, credentials, Entra ID tokens, and its lanes."""

from __future__ import annotations

import collections
import json
import pickle
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

from polars_azurechat.emulator._errors import (
    ACCESS_DENIED,
    entra_unauthorized_response,
    error_response,
    key_auth_disabled_response,
)
from polars_azurechat.emulator._faults import Faults
from polars_azurechat.emulator._lane import Lane
from polars_azurechat.emulator._settings import EmulatorSettings
from polars_azurechat.emulator._tokens import estimator

__all__ = ["ROUTES", "AuthKind", "State"]

AuthKind = Literal["key", "bearer"]

#: The surfaces chat requests are counted by (``stats()["routes"]``; the embeddings
#: routes are counted in ``stats()["embeddings"]["routes"]``).
ROUTES = ("classic", "v1", "responses")


class State:
    """Counters, faults and quota windows; touched on the server's loop, read from any thread."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.rng = random.Random(settings.seed)  # noqa: S311 - faults, not secrets
        self.on_request: Callable[[int], None] | None = None
        self.tokens = estimator(settings.token_estimator)
        #: structured-output schemas seen (pickled) -> their JSON text and tokens
        self.schemas: dict[bytes, tuple[str, int]] = {}
        self.faults_injected = Faults(settings, self.rng)
        self.clock = settings.clock or time.monotonic
        self.origin = self.clock()
        self.lanes: dict[str, Lane] = {}
        # issued Entra ID tokens -> when they expire on ``clock``; kept by reset()
        self.issued: dict[str, float] = {}
        self.reset()

    def schema(self, schema: dict[str, Any]) -> tuple[str, int]:
        """A structured-output schema's JSON text and tokens.

        Kept per schema (by its pickle, several times cheaper than its JSON): a job
        sends the same one with every request.
        """
        key = pickle.dumps(schema, protocol=pickle.HIGHEST_PROTOCOL)
        known = self.schemas.get(key)
        if known is None:
            if len(self.schemas) >= 256:
                self.schemas.clear()
            text = json.dumps(schema)
            known = self.schemas[key] = (text, self.tokens.text(text))
        return known

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.statuses: collections.Counter[str] = collections.Counter()
            self.routes: collections.Counter[str] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.in_flight = 0
            self.peak_in_flight = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.reasoning_tokens = 0
            self.cached_tokens = 0
            self.tokens_issued = 0
            self.embedding_inputs = 0
            self.embedding_tokens = 0
            self.auth: collections.Counter[AuthKind] = collections.Counter()
            lanes = list(self.lanes.values())
        self.faults_injected.reset()
        for lane in lanes:
            lane.reset()

    def lane(self, deployment: str) -> Lane:
        with self.lock:
            lane = self.lanes.get(deployment)
            if lane is None:
                lane = self.lanes[deployment] = Lane(
                    deployment,
                    self.settings,
                    self.faults_injected,
                    self.clock,
                    self.origin,
                )
            return lane

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "statuses": dict(sorted(self.statuses.items())),
                "routes": {route: self.routes[route] for route in ROUTES},
                "faults": dict(sorted(self.faults.items())),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "reasoning_tokens": self.reasoning_tokens,
                "cached_tokens": self.cached_tokens,
                "tokens_issued": self.tokens_issued,
                "embeddings": {
                    "routes": {
                        "classic": self.routes["embeddings"],
                        "v1": self.routes["embeddings_v1"],
                    },
                    "inputs": self.embedding_inputs,
                    "tokens": self.embedding_tokens,
                },
                "auth": {"key": self.auth["key"], "bearer": self.auth["bearer"]},
                "deployments": {
                    name: {
                        "requests": lane.requests,
                        "statuses": dict(sorted(lane.statuses.items())),
                    }
                    for name, lane in sorted(self.lanes.items())
                },
            }

    def issue_token(self, ttl_s: float) -> str:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s!r}")
        token = "emu-" + secrets.token_urlsafe(24)
        now = self.clock()
        with self.lock:
            # forget the expired ones, so a long run does not keep every token
            self.issued = {t: end for t, end in self.issued.items() if end > now}
            self.issued[token] = now + ttl_s
            self.tokens_issued += 1
        return token

    def revoke_tokens(self) -> None:
        with self.lock:
            self.issued.clear()

    def token_valid(self, token: str) -> bool:
        now = self.clock()
        with self.lock:
            expires = self.issued.get(token)
        return expires is not None and now < expires

    def authenticate(self, request: web.Request) -> AuthKind | web.Response:
        """Which credential the request carries, or the response refusing it.

        An ``api-key`` header wins over ``Authorization``. A bearer is an issued token
        (``"bearer"``) or, while key auth is on, the key itself (``"key"``).
        """
        s = self.settings
        key = request.headers.get("api-key")
        if key is not None:
            if not s.key_auth:
                return key_auth_disabled_response()
            if key != s.api_key:
                return error_response(401, "401", ACCESS_DENIED)
            return "key"
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # no credential at all
            if s.key_auth:
                return error_response(401, "401", ACCESS_DENIED)
            return entra_unauthorized_response()
        if self.token_valid(token):
            return "bearer"
        if token == s.api_key:
            return "key" if s.key_auth else key_auth_disabled_response()
        return entra_unauthorized_response()
