"""PrunePlan.from_json is strict: every malformed plan is an InputError naming the group and the fix."""
import json
import os

import pytest

import graphprune
from graphprune.errors import InputError
from cli_support import assert_one_line_error, run_cli
from op_models import DenseBlock, example_input


def _plan_text(groups, fmt=1):
    return json.dumps({"format": fmt, "groups": groups})


def test_real_plan_round_trips():
    plan = graphprune.prune_graph(DenseBlock().eval(), example_input(DenseBlock), ratio=0.5).plan
    assert plan.keep  # something was pruned, so the round trip checks real indices
    assert graphprune.PrunePlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("groups, fragment", [
    ({"g:1": {"size": 4, "keep": [0, 1.7]}}, "group 'g:1' keeps index 1.7, which is not an integer"),
    ({"g:1": {"size": 4, "keep": [0, 1.0]}}, "keeps index 1.0, which is not an integer"),
    ({"g:1": {"size": 4, "keep": [0, True]}}, "keeps index True, which is not an integer"),
    ({"g:1": {"size": 4, "keep": ["1"]}}, "keeps index '1', which is not an integer"),
    ({"g:1": {"size": 4, "keep": [2, 1]}}, "group 'g:1': keep indices must be sorted and unique"),
    ({"g:1": {"size": 4, "keep": [1, 1]}}, "must be sorted and unique"),
    ({"g:1": {"size": 4, "keep": [0, 4]}}, "keeps index 4, outside [0, 4)"),
    ({"g:1": {"size": 4, "keep": [-1, 2]}}, "keeps index -1, outside [0, 4)"),
    ({"g:1": {"size": 4, "keep": []}}, "keep is a non-empty list"),
    ({"g:1": {"size": 0, "keep": [0]}}, "group 'g:1' has size 0; a size is a positive integer"),
    ({"g:1": {"size": 4.0, "keep": [0]}}, "has size 4.0"),
    ({"g:1": {"size": False, "keep": [0]}}, "has size False"),
    ({"g:1": {"size": 4, "kept": [0]}}, "group 'g:1' must be {\"size\": n, \"keep\": [indices]}"),
    ({"": {"size": 4, "keep": [0]}}, "group id '' must be a non-empty string"),
])
def test_malformed_group_is_rejected(groups, fragment):
    with pytest.raises(InputError) as info:
        graphprune.PrunePlan.from_json(_plan_text(groups))
    assert fragment in str(info.value)
    assert "fix plan.json" in str(info.value)


@pytest.mark.parametrize("fmt", [2, 0, "1", 1.0, True, None])
def test_only_the_supported_format_is_read(fmt):
    with pytest.raises(InputError, match="is not supported: this graphprune reads format 1 only"):
        graphprune.PrunePlan.from_json(_plan_text({"g:1": {"size": 2, "keep": [0]}}, fmt))


@pytest.mark.parametrize("text", [
    "", "[1, 2]", '{"groups": {}}', '{"format": 1, "groups": []}', '{"format": 1, "groups": {}, "extra": 0}',
    '{"format": 1, "groups": {"a:1": {"size": 2, "keep": [0]}, "a:1": {"size": 2, "keep": [1]}}}',
])
def test_not_a_plan(text):
    with pytest.raises(InputError, match="not a graphprune plan"):
        graphprune.PrunePlan.from_json(text)


def test_cli_apply_with_a_malformed_plan(tmp_path):
    """The plan is read first: a bad plan is one line naming the group and the fix, and nothing is written."""
    plan = tmp_path / "plan.json"
    plan.write_text(_plan_text({"conv1:1": {"size": 16, "keep": [0, 1.7]}}))
    out = tmp_path / "out"
    proc = run_cli("apply", plan, "resnet56", "--out", out)
    assert_one_line_error(proc, f"PLAN '{plan}': plan group 'conv1:1' keeps index 1.7, which is not an integer")
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]


GROUPED_MODEL = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
                         nn.Conv2d(32, 8, 1))
'''
SHAPE = ("--input-shape", "1,3,16,16")


@pytest.fixture(scope="module")
def grouped_plan(tmp_path_factory):
    """A grouped model's file (grouped:build) and the plan.json `graphprune prune --target ort-x86` wrote for it."""
    root = tmp_path_factory.mktemp("grouped")
    (root / "grouped.py").write_text(GROUPED_MODEL)
    made = run_cli("prune", "grouped:build", "--ratio", "0.5", "--target", "ort-x86", *SHAPE, "--out", root / "made",
                   path=[root])
    assert made.returncode == 0, made.stderr
    return root, root / "made" / "plan.json"


def test_cli_apply_replays_a_plan_that_pruned_whole_groups(grouped_plan, tmp_path):
    """A runtime target prunes a grouped conv by whole groups; `apply` of its plan.json analyses the model so too."""
    root, plan = grouped_plan
    assert json.loads(plan.read_text())["analysed_with"] == {"grouped_convs": "whole"}
    again = run_cli("apply", plan, "grouped:build", *SHAPE, "--out", tmp_path / "again", path=[root])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "plan.json").read_text() == plan.read_text()


def test_cli_explain_groups_grouped_convs_as_prune_does(grouped_plan):
    """explain analyses with the target's grouped-conv mode, so its groups are the ones plan.json names."""
    root, plan = grouped_plan
    sizes = {gid: g["size"] for gid, g in json.loads(plan.read_text())["groups"].items()}
    assert sizes == {"_0:1": 4}  # whole groups: the grouped conv's 4 groups of 8
    for target, size, how in (("ort-x86", 4, "by whole groups"), ("none", 8, "within groups")):
        shown = run_cli("explain", "grouped:build", *SHAPE, "--target", target, path=[root])
        assert shown.returncode == 0, shown.stderr
        assert f"group _0:1  size {size}  prunable" in shown.stdout
        assert f"grouped convolutions are pruned {how}" in shown.stdout
