"""Every Core ATen op (torch.Tag.core, enumerated from torch itself) has a rule or a documented reason to freeze."""
import torch

from graphprune.rules.aten import FROZEN_BY_DESIGN, ruled_ops


def core_aten_ops() -> list:
    """Every registered aten overload tagged core (from the dispatcher, so the list does not depend on which
    packets earlier code happened to load)."""
    ops = []
    for qualified in sorted(torch._C._dispatch_get_all_op_names()):
        namespace, _, name = qualified.partition("::")
        packet_name, _, overload = name.partition(".")
        if namespace != "aten":
            continue
        packet = getattr(torch.ops.aten, packet_name, None)
        op = getattr(packet, overload or "default", None) if packet is not None else None
        if isinstance(op, torch._ops.OpOverload) and torch.Tag.core in op.tags:
            ops.append(op)
    return ops


def test_every_core_aten_op_has_a_rule_or_a_reason():
    table, ops = ruled_ops(), core_aten_ops()
    ruled = [op for op in ops if op in table]
    frozen = [op for op in ops if op in FROZEN_BY_DESIGN]
    missing = sorted(str(op) for op in ops if op not in ruled and op not in frozen)
    both = sorted(str(op) for op in ruled if op in FROZEN_BY_DESIGN)
    print(f"\nCore ATen ops: {len(ops)} total, {len(ruled)} with a rule, {len(frozen)} frozen by design")
    assert len(ops) > 150  # the enumeration itself works (torch 2.13 tags 189 overloads core)
    assert not missing, f"Core ATen ops with neither a rule nor a FROZEN_BY_DESIGN reason: {missing}"
    assert not both, f"ops both ruled and frozen by design: {both}"
    assert all(isinstance(r, str) and len(r) > 20 for r in FROZEN_BY_DESIGN.values())
