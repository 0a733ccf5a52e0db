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


def _plan(rows: RowSets) -> list[tuple[str, torch.Tensor, list[float]]]:
    """(adapter, the rows that take it, their weights) in the order the deltas are added:
    by place in each row's own LoRA list (a row's first LoRA before its second), so a row
    sums its deltas in its job's order whatever the other rows carry."""
    plan = []
    for place in range(max(len(refs) for refs in rows)):
        names = sorted({refs[place].name for refs in rows if len(refs) > place})
        for name in names:
            index = [i for i, refs in enumerate(rows) if len(refs) > place
                     and refs[place].name == name]  # fmt: skip
            weights = [float(rows[i][place].weight) for i in index]
            plan.append((name, torch.tensor(index, dtype=torch.long), weights))
    return plan


def _delta(module: Any, name: str, x: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """B·A·x · scaling for the rows of `x`, each row scaled by its own LoRA weight."""
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    x = module._cast_input_dtype(x, lora_a.weight.dtype)
    dropout = module.lora_dropout[name]
    if x.dim() == 2 and x.shape[0] > 1:  # small GEMMs: one row at a time (invariance)
        outs = [lora_b(lora_a(dropout(x[i : i + 1]))) for i in range(x.shape[0])]
        delta = torch.cat(outs)
    else:
        delta = lora_b(lora_a(dropout(x)))
    if len(set(scales)) == 1:  # one python float, as peft multiplies
        return delta * scales[0]
    shape = (-1,) + (1,) * (delta.dim() - 1)
    return delta * torch.tensor(scales, dtype=delta.dtype, device=delta.device).view(shape)


def _scaling(module: Any, name: str, weight: float) -> float:
    """peft's `set_scale(name, weight)`: the weight times alpha/r (alpha/√r for rsLoRA)."""
    if module.use_rslora.get(name, False):
        return weight * module.lora_alpha[name] / module.r[name] ** 0.5
    return weight * module.lora_alpha[name] / module.r[name]


def _hook(plan: list[tuple[str, torch.Tensor, list[float]]], rows: int) -> Any:
    def add_deltas(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.shape[0] != rows:  # not this call's rows (padding rows are never read)
            x = x[:rows]
        result = output
        for name, index, weights in plan:
            if name not in module.lora_A:
                continue
            scales = [_scaling(module, name, w) for w in weights]
            if len(index) == output.shape[0]:
                result = result + _delta(module, name, x, scales)
                continue
            part = result.index_select(0, index) + _delta(
                module, name, x.index_select(0, index), scales
            )
            result = result.index_copy(0, index, part)
        return result.to(output.dtype)

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
