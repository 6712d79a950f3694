"""Logging for workflow scripts: everything, progress bars included, goes to the rule's log."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


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
