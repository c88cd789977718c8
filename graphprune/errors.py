"""Error types. Every message says what went wrong, where (node, module path or file) and how to fix it."""


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on bad input."""


class TraceError(GraphPruneError):
    """The model cannot be traced by torch.fx."""


class InputError(GraphPruneError):
    """An argument of the public API is invalid (ratio, ignore, example inputs, plan...)."""


class UnsupportedOpError(GraphPruneError):
    """strict=True and the graph holds an op with no rule."""


class RewriteError(GraphPruneError):
    """A rewrite pass produced an invalid graph; names the pass. This is a graphprune bug."""


class ExportError(GraphPruneError):
    """ONNX export, checking or ONNX Runtime parity failed."""


class BenchError(GraphPruneError):
    """A model given to the benchmark harness cannot be loaded or run."""


class RuleError(RuntimeError):
    """A rule raised while analysing a node (a bug in the rule, not bad input); names the node and the rule.

    Raised only with strict=True or GRAPHPRUNE_RULE_ERRORS=raise; otherwise the node's channels freeze.
    """


class MissingRuntimeError(GraphPruneError):
    """An optional runtime (ExecuTorch, OpenVINO) is not installed; the message names the extra to install."""


class CalibrationError(InputError):
    """Calibration batches for int8 quantisation are empty or do not match the model's inputs."""


class RecoveryError(GraphPruneError):
    """Recovery stopped (a NaN/inf loss or gradient); the message names the step and where the last good weights are."""
