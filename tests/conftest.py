import copy

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Give BN/GN/LN non-trivial affine parameters and running statistics so they are really tested."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


class RandomScores:
    """An importance criterion with random scores: gives adversarial (arbitrary) plans."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, group, model):
        return self.rng.random(group.size)


@pytest.fixture(autouse=True, scope="session")
def _rule_errors_raise():
    """A rule that raises is a bug: in the tests it propagates (RuleError) instead of freezing its channels.
    Session-wide, so module-scoped fixtures (CLI runs in a subprocess) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRAPHPRUNE_RULE_ERRORS", "raise")
        yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Measured tables and channel-step profiles live in a per-session directory: a profile cached on the
    developer's machine would otherwise change what target="auto" means in the tests (and in the CLI
    subprocesses that module-scoped fixtures start before any function-scoped fixture runs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRAPHPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "graphprune-cache"))
        yield


def without_dtype_asserts(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of an export-frontend graph without its float32 dtype asserts, so that it runs in float64
    (graphprune.verify's precision)."""
    gm = copy.deepcopy(gm)
    for node in list(gm.graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            gm.graph.erase_node(node)
    gm.recompile()
    return gm
