"""The `graphprune` command: prune, apply, explain, bench, demo.

MODEL is a built-in model name (`graphprune explain --list` shows them), `package.module:factory` (a
function returning an nn.Module), a .pt2 ExportedProgram, a Hugging Face model directory, `timm:NAME` or an
ultralytics .pt/.yaml, each recognised from what it is (sources.py). Errors print one line on
stderr and exit non-zero (2 for a user error, 1 for a graphprune bug). An output
directory is written whole or not at all: it is staged in a hidden sibling directory
created before any work (so an unwritable --out fails first), then renamed into place.
Progress goes to stderr, only when stderr is a terminal and --quiet is not given.

    parsing.py      the grammar: commands, flags, choices, help (argparse), nothing it runs
    entry.py        main(), the entry point: dispatch to a command, one-line errors, exit codes
    messages.py     one-line errors, toolchain errors, progress lines
    models.py       MODEL -> model and example inputs
    sources.py      what MODEL is (from its bytes, not its name); loaders.py, hf.py the kinds that are files or
                    other libraries' models
    budget.py       --ratio / --target-params / --target-macs / --target-latency-ms
    images.py, text.py, distil.py   --images / --text as batches (calibration, int8, recovery); recovery
    onnx_inputs.py  ONNX files' inputs against --input-shape NAME=...
    prune.py, explain.py, bench.py, demo.py   the commands
"""
from .entry import main
from .messages import CLIError, one_line, toolchain_errors
from .onnx_inputs import check_input_shapes, parse_named_shapes
from .parsing import build_parser

__all__ = ["main", "build_parser", "CLIError", "one_line", "toolchain_errors", "check_input_shapes",
           "parse_named_shapes"]
