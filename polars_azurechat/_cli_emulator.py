"""The CLI's built-in emulator (``run --emulator``, ``embed --emulator``). Not meant for outside use.

A cache's keys name the endpoint's host and port, so an emulator on a random port
makes every rerun send everything again. With ``--cache FILE`` the emulator listens on
a port named by the file (:func:`cache_port`): a rerun with the same cache starts its
emulator on the same port and finds the answers kept (it resumes). When that port is
taken, the emulator takes a free one and the run says a rerun will not resume.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import zlib
from pathlib import Path
from typing import Any

from polars_azurechat.config import ChatConfig, shown_url
from polars_azurechat.emulator import Emulator
from polars_azurechat.options import ChatOptions

__all__ = [
    "DEFAULT_BATCH_POLL_S",
    "EMULATOR_BATCHES_GONE",
    "EMULATOR_BATCH_PACE",
    "EMULATOR_BATCH_POLL_S",
    "EMULATOR_GONE",
    "EMULATOR_PORTS",
    "cache_port",
    "start_emulator",
]

logger = logging.getLogger(__name__)

#: ``run --emulator --mode batch``: the emulator's batches take a fraction of a second,
#: and the job looks at them this often (unless --batch-poll-s is given).
EMULATOR_BATCH_PACE: dict[str, Any] = {
    "validating_s": 0.05,
    "line_s": 0.0005,
    "finalizing_s": 0.05,
    "cancelling_s": 0.05,
    "file_processing_s": 0.02,
    "tick_s": 0.01,
}
EMULATOR_BATCH_POLL_S = 0.05
DEFAULT_BATCH_POLL_S = ChatOptions().batch_poll_s

#: The ports a cache file names (below Linux's ephemeral ports, 32768 on).
EMULATOR_PORTS = range(20_000, 30_000)

#: Why a stopped ``run --emulator`` cannot be resumed, when it cannot: online, its
#: emulator was not on its cache's port; in batch mode, its batches ended with it.
EMULATOR_GONE = (
    "this run's own emulator ended with it, and a rerun with --emulator starts "
    "another on another port (the cache's keys name this one's): it sends "
    "everything again; to resume, run against one that stays (polars-azurechat "
    "emulator --port N, its AZURE_OPENAI_ENDPOINT)"
)
EMULATOR_BATCHES_GONE = (
    "this run's own emulator ended with it, and its batches with it: a rerun sends "
    "what was not collected again; to resume a batch, run against an emulator that "
    "stays (polars-azurechat emulator --port N, its AZURE_OPENAI_ENDPOINT)"
)


def cache_port(cache: str | os.PathLike[str]) -> int:
    """The emulator's port for a cache: the same for the same file, run to run.

    A file is named by its absolute path (in lower case on macOS and Windows, whose
    file systems ignore case by default: two spellings of one file name one port);
    a URL (``redis://...``) as it is given.

    Examples
    --------
    >>> cache_port("answers.sqlite") == cache_port("./answers.sqlite")
    True
    >>> cache_port("answers.sqlite") in EMULATOR_PORTS
    True
    """
    name = str(cache) if "://" in str(cache) else str(Path(cache).resolve())
    if sys.platform in ("darwin", "win32") and "://" not in name:
        name = name.lower()
    return EMULATOR_PORTS[zlib.crc32(name.encode()) % len(EMULATOR_PORTS)]


def _emulator_on(port: int, batches: Any) -> Emulator:
    """An emulator listening on ``port``; ``OSError`` when another program does.

    A program answering on ``127.0.0.1:port`` counts: on macOS and the BSDs a bind
    passes next to a program that listens on all addresses.
    """
    with socket.socket() as probe:
        probe.settimeout(0.5)
        if port and probe.connect_ex(("127.0.0.1", port)) == 0:
            raise OSError(errno.EADDRINUSE, "a program listens there")
    return Emulator(batches=batches, port=port)


def start_emulator(
    stack: contextlib.ExitStack,
    options: ChatOptions,
    *,
    deployment: str = "gpt-4o-mini",
) -> tuple[ChatConfig, ChatOptions, bool]:
    """Start the emulator for a CLI run: its config, the options, and if it resumes.

    It resumes (a rerun finds this run's answers) when it listens on the cache's port
    and sends online: a batch's records name the emulator's batches, which end with it.
    """
    from polars_azurechat.emulator._batch import BatchService

    batches = None
    if options.mode == "batch":  # a batch takes a fraction of a second here
        batches = BatchService(**EMULATOR_BATCH_PACE)
        if options.batch_poll_s == DEFAULT_BATCH_POLL_S:
            options = options.replace(batch_poll_s=EMULATOR_BATCH_POLL_S)
    port = 0 if options.cache is None else cache_port(options.cache)
    try:
        emu = stack.enter_context(_emulator_on(port, batches))
    except OSError as exc:
        logger.warning(
            "the emulator's port for %s, %d, is taken (%s): it listens on another, "
            "and a rerun will not find this run's answers",
            shown_url(str(options.cache)),
            port,
            exc.strerror or exc,
        )
        emu = stack.enter_context(Emulator(batches=batches))
        port = 0
    config = ChatConfig(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        deployment=options.deployment or deployment,
    )
    return config, options, port != 0 and batches is None
