"""Relative position biases and windows: a bias table (entries, heads) gathered by a constant index and added to
the attention scores is sliced with the heads; a pad of the spatial dims (zero on the channel dim) passes channels
through; windows are cut out by view/permute/roll.

Constructs, each on the smallest model that shows it: a Swin-style block written out (torchvision's
shifted_window_attention: packed qkv, the table indexed by a buffer, F.pad, roll, a shift mask, windows merged with
heads in the batch of a bmm under torch.export), Hugging Face's T5 encoder (one bias, an embedding of buckets,
shared by every layer and passed to attention as a mask per head) and Hugging Face's Swin (the bias as a mask per
head of scaled_dot_product_attention), and a mask per head computed from no channels (ALiBi-like slopes: read at
the kept heads through an inserted index_select). Heads and MLP channels are exact in float64 (graphprune.verify: pruning ==
hiding the channels from their consumers); frozen groups are counted, each with its reason.
"""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.groups import Role
from graphprune.options import Ratio, Strategy
from graphprune.verify import max_exactness_error
from conftest import without_dtype_asserts

os.environ["HF_HUB_OFFLINE"] = "1"

DIM, HEADS, WINDOW = 24, 3, 4


def _shift_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """Swin's mask for shifted windows of a size x size map: -100 between positions of different regions."""
    regions = torch.zeros(size, size)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, h in enumerate(bounds):
        for j, w in enumerate(bounds):
            regions[h, w] = 3 * i + j
    windows = regions.view(size // window, window, size // window, window).permute(0, 2, 1, 3).reshape(-1, window ** 2)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """torchvision's shifted_window_attention written out: x (B, H, W, C) padded to whole windows (a zero pad on
    the channel dim), shifted, cut into windows, packed qkv, scores + table[index] (+ the shift mask), merged back."""

    def __init__(self, shift: int, padded: int):
        super().__init__()
        self.shift, self.scale = shift, (DIM // HEADS) ** -0.5
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, HEADS))
        coords = torch.stack(torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (WINDOW - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * WINDOW - 1) + rel[..., 1]).flatten())
        self.register_buffer("mask", _shift_mask(padded, WINDOW, shift) if shift else torch.zeros(0))

    def forward(self, x):
        b, h, w, c = x.size(0), x.size(1), x.size(2), x.size(3)
        x = F.pad(x, (0, 0, 0, (WINDOW - w % WINDOW) % WINDOW, 0, (WINDOW - h % WINDOW) % WINDOW))
        hp, wp, n = x.size(1), x.size(2), WINDOW * WINDOW
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = (hp // WINDOW) * (wp // WINDOW)
        x = x.view(b, hp // WINDOW, WINDOW, wp // WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, n, c)
        qkv = self.qkv(x).reshape(x.size(0), n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.table[self.index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if self.shift:
            attn = attn.view(x.size(0) // windows, windows, HEADS, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, HEADS, n, n)
        x = self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(x.size(0), n, c))
        x = x.view(b, hp // WINDOW, wp // WINDOW, WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class SwinBlock(nn.Module):
    def __init__(self, shift: int, padded: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = WindowAttention(shift, padded)
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinySwin(nn.Module):
    """Patches of a 12 x 12 image: a 6 x 6 map, padded to 8 x 8 (four 4 x 4 windows), a plain and a shifted block."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 2, stride=2)
        self.blocks = nn.Sequential(SwinBlock(0, 8), SwinBlock(2, 8))
        self.head = nn.Linear(DIM, 5)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))


def _tiny_swin():
    torch.manual_seed(0)
    return TinySwin().eval(), (torch.randn(1, 3, 12, 12),)



def _groups_with(analysis, *names):
    """Prunable groups in which a parameter whose name ends with one of `names` produces channels."""
    return [g for g in analysis.dependencies.prunable
            if any(s.role is Role.PRODUCER and s.name.endswith(names) for s in g.members)]


def _prune_exactly(analysis, groups, ratio=0.5):
    """Prune `groups` only (heads and MLP channels: nothing normalises over them) and check exactness in float64."""
    strategy = Strategy("l2", ratios={g.id: ratio for g in groups})
    result = analysis.prune(Ratio(0.0), strategy, target="none")
    assert set(result.plan.keep) == {g.id for g in groups}
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), analysis.example_inputs,
                               SimpleNamespace(model=without_dtype_asserts(result.model), graph=result.graph,
                                               plan=result.plan)) <= 1e-5
    return result


@pytest.mark.parametrize("frontend", ["fx", pytest.param("export", marks=pytest.mark.slow)])
def test_windowed_attention_slices_the_bias_table_with_the_heads(frontend):
    model, x = _tiny_swin()
    analysis = graphprune.analyse(model, x, frontend=frontend)
    # frozen: the image's 3 channels and the 5 logits; the integer index buffers are index spaces, not groups
    reasons = [g.frozen_reasons[0] for g in analysis.dependencies.frozen]
    assert len(reasons) == 2, reasons
    heads = _groups_with(analysis, "table")
    assert [g.size for g in heads] == [HEADS, HEADS]  # one group per block: qkv rows, table columns, proj columns
    mlp = _groups_with(analysis, "fc1.weight", "fc1_weight")
    result = _prune_exactly(analysis, heads + mlp)
    tables = [tuple(p.shape) for name, p in result.model.named_parameters() if name.endswith("table")]
    assert tables == [((2 * WINDOW - 1) ** 2, len(result.plan.keep[g.id])) for g in heads]
    assert all(len(result.plan.keep[g.id]) < HEADS for g in heads)
    assert result.report.params_after == sum(p.numel() for p in result.model.parameters()) < result.report.params_before


@pytest.mark.slow
def test_windowed_attention_exports_to_onnx_with_parity(tmp_path):
    from graphprune.export import export_onnx

    model, x = _tiny_swin()
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="export")
    assert len(result.plan.keep) == 5  # hidden, heads and MLP channels of both blocks
    assert export_onnx(result.model, x, tmp_path / "swin.onnx").max_abs_diff <= 1e-4


def _hf_t5():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   use_cache=False)
    return transformers.T5EncoderModel(config).eval(), (torch.randint(0, 100, (1, 8)),)


def _hf_swin():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 4],
                                     window_size=4)
    model = transformers.SwinModel(config).eval()
    with torch.no_grad():  # Hugging Face initialises the tables to zeros: a wrong slice would go unseen
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()
    return model, (torch.randn(1, 3, 32, 32),)


@pytest.mark.slow
def test_t5_bias_shared_by_every_layer_is_sliced_with_their_heads():
    """T5 computes one bias (an embedding of relative-position buckets, (L, L, heads)) in layer 0 and passes it to
    every layer's attention as a mask per head: the heads of both layers and the embedding's columns are one group."""
    model, x = _hf_t5()
    analysis = graphprune.analyse(model, x)
    # frozen: the hidden size only (the encoder's last hidden state is the model's output)
    assert [g.frozen_reasons[0] for g in analysis.dependencies.frozen] == ["reaches model output through `clone_9`"]
    heads = _groups_with(analysis, "relative_attention_bias.weight")
    assert [g.size for g in heads] == [4]
    queries = {s.name for s in heads[0].members if s.role is Role.PRODUCER and s.name.endswith("SelfAttention.q.weight")}
    assert len(queries) == 2  # both layers
    result = _prune_exactly(analysis, heads + _groups_with(analysis, "wi.weight"))
    bias = dict(result.model.named_parameters())["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    assert bias.shape == (32, len(result.plan.keep[heads[0].id])) and bias.shape[1] < 4


@pytest.mark.slow
def test_hf_swin_bias_is_a_mask_per_head_sliced_with_the_heads():
    model, x = _hf_swin()
    analysis = graphprune.analyse(model, x)
    reasons = sorted(g.frozen_reasons[0] for g in analysis.dependencies.frozen)
    # frozen: the image's channels, the last hidden state (the model's output); index buffers are no groups
    assert len(reasons) == 2, reasons
    heads = _groups_with(analysis, "relative_position_bias_table")
    assert [g.size for g in heads] == [2, 2, 4]
    result = _prune_exactly(analysis, heads + _groups_with(analysis, "fc1.weight"))
    tables = [tuple(p.shape) for name, p in result.model.named_parameters() if name.endswith("table")]
    assert tables == [(49, len(result.plan.keep[g.id])) for g in heads]


class BiasedAttention(nn.Module):
    """One window of Swin-V2-like attention through scaled_dot_product_attention: packed qkv whose key bias is
    zeroed in forward (torch.export: slice_scatter into a copy), the table gathered by an index buffer as the mask."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, 4))
        self.register_buffer("index", WindowAttention(0, 0).index.clone())

    def forward(self, x):  # (B, WINDOW ** 2, 16)
        bias = self.qkv.bias.clone()
        bias[16:32].zero_()
        q, k, v = F.linear(x, self.qkv.weight, bias).view(x.size(0), x.size(1), 3, 4, 4).permute(2, 0, 3, 1, 4)
        mask = self.table[self.index].view(x.size(1), x.size(1), 4).permute(2, 0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(x.size(0), x.size(1), 16))


def test_a_bias_as_a_mask_per_head_and_a_bias_written_in_place_are_sliced_with_the_heads():
    torch.manual_seed(0)
    model, x = BiasedAttention().eval(), (torch.randn(1, WINDOW ** 2, 16),)
    analysis = graphprune.analyse(model, x, frontend="export")
    heads = _groups_with(analysis, "qkv.weight")
    assert [g.size for g in heads] == [4] and any(s.name == "table" and s.role is Role.PRODUCER for s in heads[0].members)
    result = _prune_exactly(analysis, heads)
    kept = len(result.plan.keep[heads[0].id])
    scatter = next(n for n in result.model.graph.nodes if n.target is torch.ops.aten.slice_scatter.default)
    assert scatter.args[2:] == (0, 4 * kept, 8 * kept)  # the keys' rows, among the kept heads' q, k, v rows
    assert dict(result.model.named_parameters())["table"].shape == ((2 * WINDOW - 1) ** 2, kept)


class SlopedAttention(nn.Module):
    """Attention whose mask per head is computed from no channels (ALiBi-like slopes times distances, MPT's and
    T5 cross-attention's kind: sizes written as numbers), read by scaled_dot_product_attention."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):  # (B, L, 16)
        b, n = x.size(0), x.size(1)
        q, k, v = self.qkv(x).view(b, n, 3, 4, 4).permute(2, 0, 3, 1, 4)
        distance = torch.arange(n).view(1, n) - torch.arange(n).view(n, 1)
        slopes = 2.0 ** -torch.arange(1, 5, dtype=torch.float32)
        mask = (slopes.view(4, 1, 1) * distance.abs().float().neg()).unsqueeze(0)  # (1, heads, L, L), distinct heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, 16))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_mask_per_head_from_no_channels_is_read_at_the_kept_heads(frontend):
    """The heads prune (they froze: "has a mask per head"), exactly in float64: each kept head reads its own row of
    the mask, through an index_select of the kept heads inserted before the attention."""
    torch.manual_seed(0)
    model, x = SlopedAttention().eval(), (torch.randn(1, 6, 16),)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    heads = _groups_with(analysis, "qkv.weight")
    assert [g.size for g in heads] == [4]
    result = _prune_exactly(analysis, heads)
    kept = result.plan.keep[heads[0].id]
    select = next(n for n in result.model.graph.nodes if n.target is torch.ops.aten.index_select.default)
    assert select.args[1] == 1 and getattr(result.model, select.args[2].target).tolist() == list(kept)


class Gathers(nn.Module):
    """Integer tensors as indices: on the channel dim (a gather of channels), and on a spatial dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("index", torch.tensor([3, 0, 1, 2, 7, 6, 5, 4] if dim == 1 else [3, 0, 1]))

    def forward(self, x):
        y = self.a(x)
        return self.b(y[:, self.index] if self.dim == 1 else y[:, :, self.index])


@pytest.mark.parametrize("frontend", ["fx", pytest.param("export", marks=pytest.mark.slow)])
def test_a_gather_of_channels_freezes_them_and_a_gather_of_positions_passes_them(frontend):
    """fx sees the index as a buffer read at run time and freezes the gathered channels; torch.export lifts it to
    a constant, which the indexing rule follows (output position j is channel index[j], re-written when pruned)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    gather = Gathers(1).eval()
    channels = graphprune.prune_graph(gather, x, ratio=0.5, target="none", frontend=frontend)
    reasons = [r for g in channels.report.frozen_groups for r in g.frozen_reasons]
    if frontend == "fx":
        assert any("indexes the channel dim" in r for r in reasons), reasons
        assert not channels.plan.keep
    else:
        assert [channels.plan.sizes[g] for g in channels.plan.keep] == [8]
        assert max_exactness_error(gather, (x,), channels) <= 1e-5
    model = Gathers(2).eval()
    rows = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
    assert [rows.plan.sizes[g] for g in rows.plan.keep] == [8]
    assert max_exactness_error(model, (x,), rows) <= 1e-5


def _torchvision_swin(v2: bool):
    """torchvision's Swin (v1 or v2 blocks) at the smallest size with shifted windows and two stages."""
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    blocks = dict(block=swin.SwinTransformerBlockV2, downsample_layer=swin.PatchMergingV2) if v2 else {}
    model = swin.SwinTransformer(patch_size=[4, 4], embed_dim=DIM, depths=[2, 2], num_heads=[HEADS, 2 * HEADS],
                                 window_size=[WINDOW, WINDOW], num_classes=10, **blocks).eval()
    return model, (torch.randn(1, 3, 32, 32),)


@pytest.mark.torchvision
@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_torchvision_swin_heads_are_exact_and_the_pruned_model_exports_with_parity(v2, tmp_path):
    """torchvision's shifted_window_attention (F.pad of H and W, the table gathered by an index, a shift mask;
    v2: a table computed by an MLP, logit scales per head, the key's bias zeroed in forward) under torch.export."""
    from graphprune.export import export_onnx

    model, x = _torchvision_swin(v2)
    analysis = graphprune.analyse(model, x)
    assert analysis.frontend.startswith("export")  # fx keeps torchvision's fx.wrap'd attention as one opaque call
    reasons = [g.frozen_reasons[0] for g in analysis.dependencies.frozen]
    # the image's channels, the logits (each block's integer index buffer is no group); v2: the MLP's 2 inputs
    # (constant coordinates)
    assert len(reasons) == 2 + (4 if v2 else 0), reasons
    heads = _groups_with(analysis, "qkv.weight")
    assert [g.size for g in heads] == [HEADS, HEADS, 2 * HEADS, 2 * HEADS]
    _prune_exactly(analysis, heads + _groups_with(analysis, "mlp.0.weight"))
    result = analysis.prune(Ratio(0.5), Strategy("l2"), target="none")
    assert export_onnx(result.model, x, tmp_path / "swin.onnx").max_abs_diff <= 1e-4


@pytest.mark.torchvision
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_t_loses_most_of_its_parameters_at_ratio_half(name):
    """Issue 22 item 7: at least 60% of the parameters of Swin-T and Swin-V2-T (random init) go at ratio 0.5."""
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = getattr(models, name)().eval()
    result = graphprune.prune_graph(model, torch.randn(1, 3, 224, 224), ratio=0.5, target="none")
    after = sum(p.numel() for p in result.model.parameters())
    assert result.report.params_after == after and result.report.params_before == sum(p.numel() for p in model.parameters())
    assert 1 - after / result.report.params_before >= 0.6
