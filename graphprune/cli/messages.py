"""What the command prints besides results: one-line errors and progress lines.

Errors print one line on stderr (main turns a GraphPruneError into exit 2, anything else into exit 1,
"internal error"); an exception raised inside torch/onnx/onnxruntime while the user's model is handled
is the toolchain rejecting that model, and becomes a one-line GraphPruneError too (toolchain_errors).
Progress goes to stderr, only when stderr is a terminal and --quiet is not given.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from typing import Iterator

from ..errors import GraphPruneError

# packages whose exceptions are the toolchain rejecting the user's model or inputs, not graphprune bugs
TOOLCHAIN = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime")


class CLIError(GraphPruneError):
    """A command-line argument is invalid."""


def one_line(exc: BaseException) -> str:
    """The error message on one line: torch's multi-line text cut to its first line.

    torch.fx appends "While executing ..." and a traceback after a blank line; a wrapped
    torch exception (`__cause__`) quoted in full is replaced by its first line.
    """
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and "\n" in str(cause).strip() and str(cause) in text:
        text = text.replace(str(cause), str(cause).strip().splitlines()[0])
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().split("\n\n")[0]
    return " ".join(text.split()) or type(exc).__name__


def toolchain_package(exc: BaseException) -> str | None:
    """"torch", "onnx", ... when the innermost Python frame of the traceback belongs to one of TOOLCHAIN."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = tb.tb_frame.f_globals.get("__name__", "").split(".")[0] if tb is not None else ""
    return package if package in TOOLCHAIN else None


@contextlib.contextmanager
def toolchain_errors(error: type[GraphPruneError], step: str, fix: str) -> Iterator[None]:
    """Turn an exception that torch/onnx/onnxruntime raised during `step` into a one-line `error`."""
    try:
        yield
    except GraphPruneError:
        raise
    except Exception as exc:
        package = toolchain_package(exc)
        if package is None:
            raise
        raise error(f"{step} failed inside {package}: {type(exc).__name__}: {one_line(exc)}; {fix}") from exc


class Progress:
    """Step lines on stderr ("[graphprune] exporting ... 2.1 s"), only on a terminal and without --quiet."""

    def __init__(self, quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"[graphprune] {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        print(f"[graphprune] {text} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=sys.stderr, flush=True)
            raise
        print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
