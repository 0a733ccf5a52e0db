"""Several running sets at once: which waiting job joins which set, and whose turn it is.

Part of the step batcher (`pipeline.stepbatch` runs one set: one latent shape, one UNet call
per step). Here up to `MAX_SETS` sets run in turn, jobs join them at step boundaries in
arrival order, and a job of a further shape waits for a drain without being overtaken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from pipeline.request import GenerationRequest
from pipeline.stepbatch import MAX_SETS, StepHooks, StepLoop


def run_steps(
    new_set: Callable[[], StepLoop],
    first: Sequence[GenerationRequest],
    hooks: StepHooks,
    *,
    load: Callable[[GenerationRequest], Image.Image | None],
    more: Callable[[], Sequence[GenerationRequest]] | None = None,
    max_sets: int = MAX_SETS,
) -> None:
    """Drive running sets made by `new_set` until they and the queue are empty.

    Jobs of one latent shape share a set; up to `max_sets` sets (shapes) run at once, one
    UNet call each in turn, so a portrait among landscapes starts at once instead of
    waiting for the landscapes to drain. `first` and whatever `more()` returns at each step
    boundary are admitted in arrival order while their set has a free slot (see `_admit`).
    `load` reads a job's input or reports its failure itself and returns None.
    """
    sets: list[StepLoop] = []
    waiting: list[tuple[GenerationRequest, Image.Image | None]] = [(r, None) for r in first]
    while True:
        if more is not None:
            waiting.extend((r, None) for r in more())
        _admit(sets, new_set, max_sets, waiting, hooks, load)
        if not sets:
            if not waiting:
                return
            continue  # the waiting jobs failed to load or were cancelled: look again
        loop = sets.pop(0)  # round robin: this set steps now, the others next
        loop.step(hooks)
        sets.append(loop)
        for each in sets:
            each.drop_cancelled(hooks)
        sets[:] = [each for each in sets if each.running]
        if hooks.on_step_end is not None:
            hooks.on_step_end()


def _admit(
    sets: list[StepLoop],
    new_set: Callable[[], StepLoop],
    max_sets: int,
    waiting: list[tuple[GenerationRequest, Image.Image | None]],
    hooks: StepHooks,
    load: Callable[[GenerationRequest], Image.Image | None],
) -> None:
    """Move waiting jobs into sets at a step boundary, in arrival order.

    A job joins the set of its shape while that has a free slot, or opens a new set while
    fewer than `max_sets` run. A job of a further shape waits for a set to drain; a job
    behind it still joins its set, but only if it ends no later than that set would anyway,
    so the waiting job never waits longer for it. Jobs behind a full set's waiting job
    cannot overtake it: slots of that set go to the earliest waiting job first.
    """
    blocked = False  # a job of a further shape waits ahead of the rest
    i = 0
    while i < len(waiting):
        if len(sets) >= max_sets and all(each.free == 0 for each in sets):
            return
        req, image = waiting[i]
        if hooks.is_cancelled is not None and hooks.is_cancelled(req.job_id):
            waiting.pop(i)
            if hooks.on_cancelled is not None:
                hooks.on_cancelled(req.job_id)
            continue
        if image is None:
            image = load(req)
            if image is None:  # its failure is reported; the rest go on
                waiting.pop(i)
                continue
            waiting[i] = (req, image)
        loop = next((each for each in sets if each.size == image.size), None)
        if loop is None:
            if len(sets) >= max_sets:
                blocked = True
                i += 1
                continue
            loop = new_set()
            sets.append(loop)
        elif loop.free == 0 or (blocked and loop.evals_needed(req) > loop.evals_left()):
            i += 1
            continue
        waiting.pop(i)
        try:
            loop.admit(req, image)  # its prompt and picture encoded: its own work
        except Exception as exc:
            if hooks.on_job_error is None:
                raise
            if not loop.running:
                sets.remove(loop)
            hooks.on_job_error(req.job_id, exc)
            continue
        if hooks.on_started is not None:
            hooks.on_started(req.job_id)
