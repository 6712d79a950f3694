"""Logging for workflow scripts: everything, progress bars included, goes to the rule's log.

Every progress bar of the library is made by `progress` (tqdm with log-friendly defaults): on a
terminal it behaves as tqdm does; written to a file (a rule's log) it writes one plain line per
update, at most every `LOG_MININTERVAL` seconds, so a log of a long job stays readable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_MININTERVAL", "progress", "script_logging"]

# Seconds between two progress lines written to a log file (tqdm's default, 0.1 s, would add
# ten lines a second to the log of a long job).
LOG_MININTERVAL = 5.0


class _Lines(io.TextIOBase):
    """A text stream that turns tqdm's in-place updates ("\\r" + status + padding) into one
    line per update, so a log file holds readable lines instead of carriage returns."""

    def __init__(self, stream):
        self._stream = stream

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            line = line.rstrip()
            if line:
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, writing to `kwargs["file"]` (default: the current stderr,
    which `script_logging` points at the rule's log). On a terminal nothing changes; on
    anything else updates come at most every `LOG_MININTERVAL` seconds (unless `mininterval`
    is given), one line each.

        for x, y, idx in progress(loader, desc="scoring"):
            ...
    """
    stream = kwargs.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_MININTERVAL)
        kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 10.0))
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kwargs)


@contextlib.contextmanager
def script_logging(log_path: str | Path) -> Iterator[logging.Logger]:
    """Send stderr (tqdm writes there) and the `lwise` logger to `log_path` for the block.

    An exception is logged with its traceback before it propagates, so the log shows why a job
    failed.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as stream:
        old_stderr = sys.stderr
        sys.stderr = stream
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("lwise")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield logger
        except BaseException:
            logger.exception("failed")
            raise
        finally:
            logger.removeHandler(handler)
            sys.stderr = old_stderr
