"""PyTorch's CPU thread count for one call, restored afterwards."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

__all__ = ["limit_threads"]

F = TypeVar("F", bound=Callable)


def limit_threads(fn: F) -> F:
    """Run `fn` with PyTorch's intra-op CPU threads set to its `threads` argument (its default
    when not given; oversubscribed threads slow small models several-fold on a shared
    machine), and the caller's count restored afterwards, so that a caller in the same process
    (a test, a notebook) keeps its own."""
    default = inspect.signature(fn).parameters["threads"].default

    @functools.wraps(fn)
    def wrapper(*args, threads: int = default, **kwargs):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        try:
            return fn(*args, threads=threads, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper  # type: ignore[return-value]
