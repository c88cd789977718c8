"""Error types. Every message says what went wrong, where (node, module path or file) and how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): torch's messages run to pages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on bad input."""


class TraceError(GraphPruneError):
    """The model cannot be traced by torch.fx."""


class InputError(GraphPruneError):
    """An argument of the public API is invalid (ratio, ignore, example inputs, plan...)."""


class UnsupportedOpError(GraphPruneError):
    """strict=True and the graph holds an op with no rule."""


class RewriteError(GraphPruneError):
    """A rewrite pass produced an invalid graph; names the pass. This is a graphprune bug (or a custom rule's).

    `node`: the name of the node where the rewritten model failed or whose rule's shrink raised, when known.
    """

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


class ExportError(GraphPruneError):
    """ONNX export, checking or ONNX Runtime parity failed."""


class BenchError(GraphPruneError):
    """A model given to the benchmark harness cannot be loaded or run."""


class RuleError(RuntimeError):
    """A rule failed on a node while analysing it (`couple` or `stand_in` raised) or rewriting it (its shrink raised
    or left a model that fails the pass's check): a bug in the rule, not bad input; names the node and the rule.

    Raised only with strict=True (a failing `couple` or `stand_in` also with GRAPHPRUNE_RULE_ERRORS=raise, as the
    test suite sets); otherwise the channels it touches freeze (a failing `stand_in`: the layer is computed).
    """


class MissingRuntimeError(GraphPruneError):
    """An optional runtime (ExecuTorch, OpenVINO) or library (peft) is not installed; the message names the extra
    to install."""


class CalibrationError(InputError):
    """Calibration batches for int8 quantisation are empty or do not match the model's inputs."""


class RecoveryError(GraphPruneError):
    """Recovery stopped (a NaN/inf loss or gradient); the message names the step and where the last good weights are."""
