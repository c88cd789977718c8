"""`graphprune`'s entry point: parse, run the command, and turn every error into one line and an exit code.

Exit codes: 0 done; 2 a user error (a GraphPruneError: bad argument, model or input; argparse's own
errors too); 1 a graphprune bug ("internal error", still one line, never a traceback); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). Both signals unwind the command as an exception does (signals.py), so
the output it was staging (atomic.StagedDirectory, temp files) is removed and nothing partial is left.
"""
from __future__ import annotations

import sys

from ..errors import GraphPruneError
from .bench import cmd_bench
from .demo import cmd_demo
from .explain import cmd_explain
from .messages import one_line
from .parsing import build_parser
from .prune import cmd_apply, cmd_prune
from .recover import cmd_recover
from .signals import Terminated, sigterm_unwinds

COMMANDS = {"prune": cmd_prune, "apply": cmd_apply, "recover": cmd_recover, "explain": cmd_explain,
            "bench": cmd_bench, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_unwinds():
            return COMMANDS[args.command](args)
    except GraphPruneError as exc:
        print(f"graphprune: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("graphprune: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except Exception as exc:  # a graphprune bug: still one line, never a traceback on the terminal
        print(f"graphprune: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(please report this with the command line)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
