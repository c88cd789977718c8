"""Optional runtimes are imported when a function needs them, never at ``import graphprune``."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import MissingRuntimeError
from ..export import first_line

EDGE_EXTRA = "pip install 'graphprune[edge]'"


@contextlib.contextmanager
def optional_runtime(name: str) -> Iterator[None]:
    """Turn an ImportError raised inside the block into a one-line MissingRuntimeError naming the extra.

    Keep only imports inside the block, so that no other ImportError is mislabelled.
    """
    try:
        yield
    except ImportError as exc:
        raise MissingRuntimeError(
            f"{name} is not installed ({first_line(exc)}); install the edge runtimes with: {EDGE_EXTRA}"
        ) from exc
