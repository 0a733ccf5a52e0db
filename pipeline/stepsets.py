"""Several running sets at once: which waiting job joins which set, and whose turn it is.

Part of the step batcher (`pipeline.stepbatch` runs one set: one model, one latent shape,
one UNet call per step). Here up to `MAX_SETS` sets run in turn, jobs join them at step
boundaries in arrival order, and a job of a further shape, or of a model that must first be
loaded in place of one whose set still runs (`ModelGate`), waits for a drain without being
overtaken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from PIL import Image

from pipeline.request import GenerationRequest
from pipeline.stepbatch import MAX_SETS, StepHooks, StepLoop


class ModelGate(Protocol):
    """The served models of a worker, as the step loop sees them (`pipeline.models`)."""

    def model_of(self, req: GenerationRequest) -> str:
        """The served model name `req` runs on ("" means the worker's default)."""
        ...

    def is_resident(self, name: str) -> bool:
        """Loaded now: its jobs may join a set."""
        ...

    def prepare(
        self,
        waiting: Sequence[GenerationRequest],
        busy: set[str],
        on_failed: Callable[[str, str], None] | None,
    ) -> set[str]:
        """Fail the jobs of models not served; load the model of the first waiting job
        whose model is not resident, if a place is free or a resident model outside `busy`
        (those with running sets) can be unloaded. Returns the job ids it ended."""
        ...


Sets = list[tuple[str, StepLoop]]
"""The running sets, each with the name of its model."""


def run_steps(
    new_set: Callable[[GenerationRequest], StepLoop],
    first: Sequence[GenerationRequest],
    hooks: StepHooks,
    *,
    load: Callable[[GenerationRequest], Image.Image | None],
    more: Callable[[], Sequence[GenerationRequest]] | None = None,
    max_sets: int = MAX_SETS,
    gate: ModelGate | None = None,
) -> None:
    """Drive running sets made by `new_set` (for a job's model) until they and the queue
    are empty.

    Jobs of one model and one latent shape share a set; up to `max_sets` sets run at once,
    one UNet call each in turn, so a portrait among landscapes starts at once instead of
    waiting for the landscapes to drain. `first` and whatever `more()` returns at each step
    boundary are admitted in arrival order while their set has a free slot (see `_admit`).
    `load` reads a job's input (its model resident) or reports its failure itself and
    returns None. Without a `gate` every job runs on the one model.
    """
    sets: Sets = []
    waiting: list[tuple[GenerationRequest, Image.Image | None]] = [(r, None) for r in first]
    while True:
        if more is not None:
            waiting.extend((r, None) for r in more())
        if gate is not None and waiting:
            _swap(gate, sets, waiting, hooks)
        _admit(sets, new_set, max_sets, waiting, hooks, load, gate)
        if not sets:
            if not waiting:
                return
            continue  # the waiting jobs failed to load or were cancelled: look again
        model, loop = sets.pop(0)  # round robin: this set steps now, the others next
        loop.step(hooks)
        sets.append((model, loop))
        for _, each in sets:
            each.drop_cancelled(hooks)
        sets[:] = [(m, each) for m, each in sets if each.running]
        if hooks.on_step_end is not None:
            hooks.on_step_end()


def _swap(
    gate: ModelGate,
    sets: Sets,
    waiting: list[tuple[GenerationRequest, Image.Image | None]],
    hooks: StepHooks,
) -> None:
    """Let the gate load what the first waiting job needs (if it can now) and drop the
    jobs it ended (a model not served, or one that failed to load)."""
    cancelled = hooks.is_cancelled
    live = [r for r, _ in waiting if cancelled is None or not cancelled(r.job_id)]
    ended = gate.prepare(live, {model for model, _ in sets}, hooks.on_failed)
    if ended:
        waiting[:] = [(r, image) for r, image in waiting if r.job_id not in ended]


def _admit(
    sets: Sets,
    new_set: Callable[[GenerationRequest], StepLoop],
    max_sets: int,
    waiting: list[tuple[GenerationRequest, Image.Image | None]],
    hooks: StepHooks,
    load: Callable[[GenerationRequest], Image.Image | None],
    gate: ModelGate | None = None,
) -> None:
    """Move waiting jobs into sets at a step boundary, in arrival order.

    A job joins the set of its model and shape while that has a free slot, or opens a new
    set while fewer than `max_sets` run. A job of a further shape, or of a model not loaded
    yet, waits for a set to drain; a job behind it still joins its set, but only if it ends
    no later than that set would anyway (and opens no new set), so the waiting job never
    waits longer for it. Jobs behind a full set's waiting job cannot overtake it: slots of
    that set go to the earliest waiting job first.
    """
    blocked = False  # a job of a further shape or model waits ahead of the rest
    i = 0
    while i < len(waiting):
        if len(sets) >= max_sets and all(each.free == 0 for _, each in sets):
            return
        req, image = waiting[i]
        if hooks.is_cancelled is not None and hooks.is_cancelled(req.job_id):
            waiting.pop(i)
            if hooks.on_cancelled is not None:
                hooks.on_cancelled(req.job_id)
            continue
        model = gate.model_of(req) if gate is not None else ""
        if gate is not None and not gate.is_resident(model):
            blocked = True  # its model loads once a resident one's sets drained
            i += 1
            continue
        if image is None:
            image = load(req)
            if image is None:  # its failure is reported; the rest go on
                waiting.pop(i)
                continue
            waiting[i] = (req, image)
        loop = next((each for m, each in sets if m == model and each.size == image.size), None)
        if loop is None:
            if len(sets) >= max_sets or blocked:
                blocked = True
                i += 1
                continue
            loop = new_set(req)
            sets.append((model, loop))
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
                sets[:] = [(m, each) for m, each in sets if each is not loop]
            hooks.on_job_error(req.job_id, exc)
            continue
        if hooks.on_started is not None:
            hooks.on_started(req.job_id)
