"""Regression pins: the plan and the measured counts of every zoo model at ratio 0.5.

Refactors must not change what prune_graph decides. The pinned values were printed by
this file's `python tests/test_plan_pins.py` before the analysis-stage refactor (which kept
them all), then updated once, deliberately, when rounding to channel steps changed from
"always down" to "nearest step" (issue 13); any other change of planning behaviour updates
them with the reason in the commit.
The target is spelled out (the AVX-512 `ort-x86` steps) so the pins do not depend on the CPU.
"""
import dataclasses
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
    kept = dataclasses.replace(result.plan, analysed_with={})  # the pins were taken before plans recorded it
    digest = hashlib.sha256(kept.to_json().encode()).hexdigest()[:16]
    return digest, result.report.params_after, result.report.macs_after


PINS = {
    'convnext_tiny': ('30e8a9aa5f677b1c', 7438360, 1143964032),
    'densenet121': ('a1db7057a431a486', 2274728, 738299904),
    'efficientnet_b0': ('3d15f06358b83630', 1779150, 123860112),
    'googlenet': ('9027693ccece4783', 1971528, 414589440),
    'mobilenet_v2': ('23c56efd2595f5e6', 1224088, 94723136),
    'mobilenet_v3_large': ('495c555e6c164b94', 1752920, 73377296),
    'regnet_y_400mf': ('30c2664dd08122f7', 1332626, 127183936),
    'resnet18': ('08407977bb8a2de0', 3055880, 483149824),
    'resnet50': ('46bd9a53265bc8e2', 6917640, 1052311552),
    'resnet56': ('f0a6507c712f0d57', 248186, 63947072),
    'resnext50_32x4d': ('4fa92cddb6a92baa', 7143048, 1145438208),
    'shufflenet_v2_x1_0': ('e5ed6ca7b0ac3c0e', 937560, 67446392),
    'squeezenet1_1': ('c3d948fcb6f52ee2', 462632, 135082336),
    'unet': ('a875693d7c280166', 1934914, 758382592),
    'vgg16_bn': ('d52a7192da1e70a0', 35621896, 3890266112),
    'vit_b_16': ('33356e53e3520bc6', 22050664, 4598882304),
    'vit_tiny': ('dc49d35b1e201191', 474538, 8013248),
    'wide_resnet50_2': ('6b75076975e8321e', 17752968, 2879520768),
    'yolo_tiny': ('eab98f7bb0c04126', 824621, 172171264),  # equal chunk halves put on their step before aligning
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(ZOO)])
def test_plan_and_counts_are_pinned(name):
    assert fingerprint(name) == tuple(PINS[name])


VARIANT_PINS = {
    'resnet18/global': ('49da46af71303012', 3129640, 486762496),
    'resnet18/macs': ('1330a65812ddc786', 4662888, 651604480),
    'resnet18/flops_l2': ('e5b38ec2c0f178c0', 4351560, 637125248),
    'resnet18/none': ('d7ac8aeec0c88b80', 5820556, 900179300),
    'mobilenet_v2/global': ('0037230c87501e62', 1383288, 99830144),
    'mobilenet_v2/macs': ('62fa8b8771cd8e6b', 1586248, 119607504),
    'mobilenet_v2/flops_l2': ('c4f34c9d63987334', 1593528, 120749792),
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
