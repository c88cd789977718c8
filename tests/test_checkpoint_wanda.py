"""prune_checkpoint(importance="wanda"): calibration run one decoder layer at a time from the shards (issue 24).

The oracle is prune_graph(importance="wanda") on the same model in memory with the same calibration batches:
the same plan (kept channels per group), and the same written tensors as its pruned module's.
"""
import os
import sys

import numpy as np
import pytest
import torch

import graphprune
from graphprune.checkpoint import prune_checkpoint
from graphprune.checkpoint.progress import SILENT
from graphprune.checkpoint.prune import _criterion
from graphprune.checkpoint.layerwise import LayerwiseRun, decoder_stack
from graphprune.checkpoint.model import alias_names, build_meta, checkpoint_keys
from graphprune.checkpoint.scores import StreamedMagnitude, StreamedWanda
from graphprune.checkpoint.source import Checkpoint
from checkpoint_support import calibration_batches as _batches, stored_tensors as _stored
from graphprune.errors import InputError
from graphprune.importance import ScoringContext, Wanda, layer_reads

os.environ["HF_HUB_OFFLINE"] = "1"
T = pytest.importorskip("transformers")
sys.path.insert(0, os.path.dirname(__file__))
from test_checkpoint_stream import _llama  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("wanda")
    model = _llama(tied=False)
    model.save_pretrained(str(root / "src"), max_shard_size="20KB")
    return model, root


@pytest.fixture(scope="module")
def streamed(saved):
    """The in-memory analysis and Wanda's calibration context, and the layer-by-layer norms from the shards."""
    model, root = saved
    analysis = graphprune.analyse(model, (_batches()[0],), frontend="export")
    ctx = ScoringContext(analysis.graph_module, analysis.dependencies, tuple((b,) for b in _batches()),
                         layer_inputs=analysis.layer_inputs)
    checkpoint = Checkpoint.open(root / "src")
    with torch.device("meta"):
        meta = type(model)(model.config).eval()
    aliases = alias_names(meta)
    keys = checkpoint_keys(aliases, checkpoint)
    norms = LayerwiseRun(meta, checkpoint, keys).norms(_batches())
    return analysis, ctx, checkpoint, keys, aliases, norms


def test_layer_by_layer_input_norms_equal_the_graphs(saved, streamed):
    """Every Linear's ||X_j|| from the layer-by-layer run equals importance.Wanda's over the captured graph,
    bit for bit."""
    model, _ = saved
    _, ctx, _, _, _, norms = streamed
    reads = layer_reads(ctx.model, ctx.graph, ctx.layer_inputs)
    expected = Wanda.input_norms(ctx, {r.reads for r in reads.values()})
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(norms) == linears
    compared = 0
    for weight, read in reads.items():
        module = weight.rpartition(".")[0]
        if module in linears:
            assert read.weight_dim == 1
            assert torch.equal(norms[module], expected[read.reads]), module
            compared += 1
    assert compared == len(linears)  # every Linear's input is known to the graph, and compared


def test_streamed_wanda_scores_equal_wandas(streamed):
    """The scores from the shards and the recorded norms equal importance.Wanda's in memory, bit for bit, on
    every prunable group (so the planner, given the same scores, makes the same plan)."""
    analysis, ctx, checkpoint, keys, aliases, norms = streamed
    groups = list(analysis.dependencies.prunable)
    criterion = StreamedWanda(checkpoint, keys, {f"{n}.weight": t for n, t in norms.items()}, aliases)
    got, want = criterion(groups, ctx), Wanda()(groups, ctx)
    assert set(got) == set(want) == {g.id for g in groups} and len(groups) >= 4
    for gid in want:
        assert np.array_equal(got[gid], want[gid]), gid
    l1 = StreamedMagnitude(checkpoint, keys, 1)(groups, ctx)
    assert any(not np.array_equal(got[g], l1[g]) for g in want)  # the calibration data counted


@pytest.mark.slow  # prune_checkpoint and prune_graph each export the model: about 25 s on 2 cores
@pytest.mark.parametrize("importance", ["wanda", "activation"])
def test_the_streamed_plan_and_tensors_equal_prune_graphs(saved, importance):
    model, root = saved
    out = root / f"out-{importance}"
    streamed = prune_checkpoint(root / "src", out, ratio=0.5, importance=importance, calibration=_batches(),
                                target="none")
    in_memory = graphprune.prune_graph(model, (_batches()[0],), ratio=0.5, importance=importance,
                                       calibration=[(b,) for b in _batches()], target="none")
    assert streamed.plan.keep == in_memory.plan.keep and streamed.plan.keep
    l2 = graphprune.prune_graph(model, (_batches()[0],), ratio=0.5, importance="l2", target="none")
    assert l2.plan.keep != in_memory.plan.keep  # the calibration data decided something
    expected, stored = in_memory.module.state_dict(), _stored(out)
    assert set(stored) == set(_stored(root / "src"))
    for key, tensor in stored.items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("importance", ["wanda", "activation"])
def test_the_streamed_data_driven_criteria_score_as_in_memory(saved, streamed, importance):
    """The criterion prune_checkpoint builds (a layer-by-layer run, then the shards) scores every prunable group
    exactly as the in-memory criterion scores the model's graph on the same batches, bit for bit."""
    model, _ = saved
    analysis, ctx, checkpoint, keys, aliases, _ = streamed
    groups = list(analysis.dependencies.prunable)
    build = lambda: build_meta(type(model), model.config)  # noqa: E731
    got = _criterion(importance, checkpoint, keys, aliases, build, _batches(), SILENT)(groups, ctx)
    want = graphprune.importance.BUILTIN[importance](groups, ctx)
    assert set(got) == set(want) == {g.id for g in groups} and len(groups) >= 4
    for gid in want:
        assert np.array_equal(got[gid], want[gid]), gid


def test_a_model_without_a_decoder_stack_is_refused():
    with pytest.raises(InputError, match="no stack of decoder layers"):
        decoder_stack(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    two = torch.nn.Module()
    two.a = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    two.b = torch.nn.ModuleList([torch.nn.ReLU() for _ in range(3)])
    with pytest.raises(InputError, match="several stacks of 3 layers"):
        decoder_stack(two)
    nested = torch.nn.Module()
    nested.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.ModuleList([torch.nn.ReLU()] * 2))
                                         for _ in range(2)])
    assert decoder_stack(nested)[0] == "layers"


def test_bad_calibration_is_refused_before_anything_is_written(saved, tmp_path):
    _, root = saved
    with pytest.raises(InputError, match="calibration batch 1 is Tensor of shape"):
        prune_checkpoint(root / "src", tmp_path / "out", ratio=0.5, importance="wanda",
                         calibration=[_batches()[0], torch.zeros(2, 8)])
    with pytest.raises(InputError, match="calibration= is for the data-driven criteria"):
        prune_checkpoint(root / "src", tmp_path / "out", ratio=0.5, importance="l2", calibration=_batches())
    assert os.listdir(tmp_path) == []
