"""Per-row LoRA deltas inside one shared UNet call.

Part of the step batcher (`pipeline.stepbatch`). Rows of one UNet call may carry different
LoRA sets (none, A, A+B at other weights…). The UNet's LoRA layers stay inactive (the base
weights only) and, for the duration of that call, a forward hook on each of them adds to
every row its own deltas: output[row] += Σ weight·(alpha/r)·B·A·x[row] over the row's
LoRAs. This is what peft's `_mixed_batch_forward` does for one adapter per row, but with
several weighted LoRAs per row (peft ties a strength to an adapter, so one adapter per row
cannot give two jobs one LoRA at two weights).

Exactness: a row gets its deltas in its job's LoRA order (as peft adds active adapters in
`set_adapters` order), each one as `result + B(A(x)) · scaling` like peft's own forward,
so a job gives the same bits alone as among other rows, whatever its adapters are named.
The scaling and the sum are done in place (on the fresh product, on the layer's fresh
output; `index_add_` for a part of the rows): an elementwise product or sum has the same
bits wherever it is written, and the in-place forms save three activation-sized
allocations per layer and LoRA, which cost more than the LoRA's arithmetic on small models.
The LoRA matmuls run on the rows' (rows, tokens, C) activations, which are
batch-invariant on CPU like the attention projections themselves; a 2-D input (a
time-embedding layer: small GEMMs that change kernel with the row count) runs row by row,
as `pipeline.invariance` runs those layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pipeline.loras import lora_layers
from pipeline.request import LoraRef

RowSets = Sequence[tuple[LoraRef, ...]]
Plan = list[tuple[str, torch.Tensor | None, list[float]]]
"""(adapter, the rows that take it (None: every row of the call), their weights)."""


def _plan(rows: RowSets) -> Plan:
    """The deltas in the order they are added: by place in each row's own LoRA list (a
    row's first LoRA before its second), so a row sums its deltas in its job's order
    whatever the other rows carry. Made once per UNet call, for all its LoRA layers."""
    plan: Plan = []
    for place in range(max(len(refs) for refs in rows)):
        names = sorted({refs[place].name for refs in rows if len(refs) > place})
        for name in names:
            index = [i for i, refs in enumerate(rows) if len(refs) > place
                     and refs[place].name == name]  # fmt: skip
            weights = [float(rows[i][place].weight) for i in index]
            every = len(index) == len(rows)
            plan.append((name, None if every else torch.tensor(index, dtype=torch.long), weights))
    return plan


def _delta(
    module: Any, name: str, x: torch.Tensor, scales: list[float], per_row: dict[Any, torch.Tensor]
) -> torch.Tensor:
    """B·A·x · scaling for the rows of `x`, each row scaled by its own LoRA weight. The
    product is a fresh tensor, so it is scaled in place (the same bits as peft's
    `… * scaling`, one allocation fewer)."""
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    x = module._cast_input_dtype(x, lora_a.weight.dtype)
    dropout = module.lora_dropout[name]
    if x.dim() == 2 and x.shape[0] > 1:  # small GEMMs: one row at a time (invariance)
        outs = [lora_b(lora_a(dropout(x[i : i + 1]))) for i in range(x.shape[0])]
        delta = torch.cat(outs)
    else:
        delta = lora_b(lora_a(dropout(x)))
    if len(set(scales)) == 1:  # one python float, as peft multiplies
        return delta.mul_(scales[0])
    # Per-row scales in the dtype a python float is applied in (float32 for half types).
    dtype = torch.promote_types(delta.dtype, torch.float32)
    key = (tuple(scales), dtype, delta.device, delta.dim())
    if key not in per_row:
        shape = (-1,) + (1,) * (delta.dim() - 1)
        per_row[key] = torch.tensor(scales, dtype=dtype, device=delta.device).view(shape)
    return delta.mul_(per_row[key])


def _scaling(module: Any, name: str, weight: float) -> float:
    """peft's `set_scale(name, weight)`: the weight times alpha/r (alpha/√r for rsLoRA)."""
    if module.use_rslora.get(name, False):
        return weight * module.lora_alpha[name] / module.r[name] ** 0.5
    return weight * module.lora_alpha[name] / module.r[name]


def _add(result: torch.Tensor, delta: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """`result + delta` on the part's rows, in place: an elementwise sum gives the same
    bits written into `result` as into a new tensor. Where peft's `result + …` would
    promote (LoRA weights wider than the layer's output), `result` is widened first."""
    wide = torch.promote_types(result.dtype, delta.dtype)
    if wide != result.dtype:
        result = result.to(wide)
    if index is None:
        return result.add_(delta)
    return result.index_add_(0, index, delta)


def _hook(plan: Plan, rows: int) -> Any:
    per_row: dict[Any, torch.Tensor] = {}  # per-row scale tensors, shared by the layers

    def add_deltas(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.shape[0] != rows:  # not this call's rows (padding rows are never read)
            x = x[:rows]
        target = output if output.shape[0] == rows else output[:rows]
        result = target
        for name, index, weights in plan:
            if name not in module.lora_A:
                continue
            scales = [_scaling(module, name, w) for w in weights]
            part = x if index is None else x.index_select(0, index)
            result = _add(result, _delta(module, name, part, scales, per_row), index)
        if result is not target:  # widened: back to the layer's dtype, as peft's `.to`
            target.copy_(result)
        return output

    return add_deltas


@contextlib.contextmanager
def row_loras(unet: Any, rows: RowSets) -> Iterator[None]:
    """During one UNet call whose row i carries the LoRAs `rows[i]`: each LoRA layer adds
    every row's own deltas. No LoRA on any row: nothing is hooked."""
    if not any(rows):
        yield
        return
    hook = _hook(_plan(rows), len(rows))
    handles = [layer.register_forward_hook(hook) for layer in lora_layers(unet)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
