"""Regression pins: the plan and the measured counts of every zoo model at ratio 0.5.

Refactors must not change what prune_graph decides. The pinned values were printed by
this file's `python tests/test_plan_pins.py` before the analysis-stage refactor; a
deliberate change of planning behaviour updates them (with the reason in the commit).
The target is spelled out (the AVX-512 `ort-x86` steps) so the pins do not depend on the CPU.
"""
import hashlib
import json

import pytest

import graphprune
from graphprune.models import ZOO
from graphprune.targets import Target

PINNED_TARGET = Target("ort-x86/avx512", dense_conv=16, grouped_conv=16, linear=8, one_block=True)
SLOW = {"vgg16_bn", "wide_resnet50_2", "vit_b_16", "convnext_tiny", "resnext50_32x4d", "densenet121"}


VARIANTS = {  # the other ways of saying how much and which, on two small models
    "global": dict(ratio=0.5, scope="global"),
    "macs": dict(target_macs=0.4),  # a share of the model's MACs, converted below
    "flops_l2": dict(ratio=0.4, importance="flops_l2"),
    "none": dict(ratio=0.3, target="none", min_keep=0.3),
}


def fingerprint(name: str, **options) -> tuple[str, int, int]:
    spec = ZOO[name]
    options = {"ratio": 0.5, "target": PINNED_TARGET, **options}
    if "target_macs" in options:
        options.pop("ratio")
        options["target_macs"] = int(options["target_macs"] * graphprune.prune_graph(
            spec.build(), spec.example_inputs(), ratio=0.0).report.macs_before)
    result = graphprune.prune_graph(spec.build(), spec.example_inputs(), **options)
    digest = hashlib.sha256(result.plan.to_json().encode()).hexdigest()[:16]
    return digest, result.report.params_after, result.report.macs_after


PINS = {
    'convnext_tiny': ('30e8a9aa5f677b1c', 7438360, 1143964032),
    'densenet121': ('a1db7057a431a486', 2274728, 738299904),
    'efficientnet_b0': ('54fe72d6425fde2d', 1648974, 109181520),
    'googlenet': ('0a539e17d4813865', 1886600, 400314368),
    'mobilenet_v2': ('f3d6e6ad5c8bfcc7', 1222648, 91549504),
    'mobilenet_v3_large': ('ec6f27ae45bf74d7', 1672760, 64246608),
    'regnet_y_400mf': ('9bbcd747a3f8de70', 1136290, 99484480),
    'resnet18': ('08407977bb8a2de0', 3055880, 483149824),
    'resnet50': ('46bd9a53265bc8e2', 6917640, 1052311552),
    'resnet56': ('f0a6507c712f0d57', 248186, 63947072),
    'resnext50_32x4d': ('4fa92cddb6a92baa', 7143048, 1145438208),
    'shufflenet_v2_x1_0': ('a41f57be346f3d99', 1039148, 55996856),
    'squeezenet1_1': ('5181a225bc3435fe', 426760, 129025376),
    'unet': ('a875693d7c280166', 1934914, 758382592),
    'vgg16_bn': ('d52a7192da1e70a0', 35621896, 3890266112),
    'vit_b_16': ('33356e53e3520bc6', 22050664, 4598882304),
    'vit_tiny': ('dc49d35b1e201191', 474538, 8013248),
    'wide_resnet50_2': ('6b75076975e8321e', 17752968, 2879520768),
    'yolo_tiny': ('1bb0ab29a5ff7780', 906661, 177446912),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(ZOO)])
def test_plan_and_counts_are_pinned(name):
    assert fingerprint(name) == tuple(PINS[name])


VARIANT_PINS = {
    'resnet18/global': ('015388a9719780e0', 2859272, 404624384),
    'resnet18/macs': ('aa77cb73b187d3f1', 5541448, 716313344),
    'resnet18/flops_l2': ('6dd63130f8383067', 4068104, 549191808),
    'resnet18/none': ('d7ac8aeec0c88b80', 5820556, 900179300),
    'mobilenet_v2/global': ('5ecf7d9afb192b61', 1325304, 90793440),
    'mobilenet_v2/macs': ('2149d3daf5bef856', 1725384, 115550336),
    'mobilenet_v2/flops_l2': ('2d36fe2ec8c10e17', 1554968, 109170896),
    'mobilenet_v2/none': ('d6eb64ca36fe57e2', 2004202, 151909247),
}


@pytest.mark.parametrize("key", sorted(VARIANT_PINS))
def test_strategy_variants_are_pinned(key):
    name, variant = key.split("/")
    assert fingerprint(name, **VARIANTS[variant]) == tuple(VARIANT_PINS[key])


if __name__ == "__main__":
    print(json.dumps({name: fingerprint(name) for name in sorted(ZOO)}, indent=1))
    print(json.dumps({f"{n}/{v}": fingerprint(n, **VARIANTS[v]) for n in ("resnet18", "mobilenet_v2") for v in VARIANTS},
                     indent=1))
