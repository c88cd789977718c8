"""tree_tables gives, in one walk, the three tables torch's named_* walks give: same keys, same order, same objects."""
import pytest
import torch
from torch import nn

from graphprune.models import ZOO
from graphprune.moduletree import tree_tables


def torch_tables(root: nn.Module):
    return (list(root.named_modules()), list(root.named_parameters(remove_duplicate=False)),
            list(root.named_buffers(remove_duplicate=False)))


def assert_same_tables(root: nn.Module) -> None:
    tables = tree_tables(root)
    for ours, theirs in zip(tables, torch_tables(root)):
        assert [name for name, _ in ours.items()] == [name for name, _ in theirs]
        assert all(value is ours[name] for name, value in theirs)


class Shared(nn.Module):
    """A block reached under three names (one of them inside another shared block), a tied weight, a None
    parameter and a None buffer, and a plain tensor attribute (no table lists it)."""

    def __init__(self):
        super().__init__()
        inner = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.a = nn.Sequential(inner, nn.ReLU())
        self.b = self.a  # the whole subtree again
        self.c = nn.ModuleDict({"again": inner})  # part of it under a third name
        self.head = nn.Linear(3, 3, bias=False)
        self.head.weight = inner[0].weight  # tied
        self.register_parameter("missing", None)
        self.register_buffer("empty", None)
        self.register_buffer("scale", torch.ones(1), persistent=False)
        self.plain = torch.zeros(2)


class ReachedFirstAlone(nn.Module):
    """A block registered on its own before the container that holds it: the container's copy of it is the repeat."""

    def __init__(self):
        super().__init__()
        inner = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        self.alone = inner
        self.stack = nn.Sequential(inner, nn.Linear(2, 2))


@pytest.mark.parametrize("build", [Shared, ReachedFirstAlone, lambda: nn.Module(), lambda: nn.Linear(2, 2),
                                   ZOO["resnet56"].build, ZOO["vit_tiny"].build])
def test_tables_equal_torchs_walks(build):
    assert_same_tables(build())


def test_a_repeated_module_is_listed_once_and_its_tensors_under_every_name():
    tables = tree_tables(Shared())
    assert "b" not in tables.modules and "c.again" not in tables.modules and "a.0.0" in tables.modules
    assert {"a.0.0.weight", "b.0.0.weight", "c.again.0.weight", "head.weight"} <= set(tables.params)
    assert tables.params["head.weight"] is tables.params["b.0.0.weight"]
    assert "missing" not in tables.params and "empty" not in tables.buffers and "scale" in tables.buffers
