"""A worker's served models: up to RESIDENT_MODELS loaded at once, swapped on demand.

A worker serves the models of WORKER_MODELS (`WorkerConfig.models`, its default first) and
keeps up to `resident_models` of them loaded, each an `Engine` of its own (its pipeline,
resolution, safety checker and LoRA adapters). A job names its model (`GenerationRequest.
model`, "" for the default); one for a model that is not loaded loads it, unloading the
least recently used model first, but only once none of that model's jobs runs: in the step
path its sets drain while the job waits in the worker (`pipeline.stepsets`: jobs behind it
join only where that ends no later); in the call path nothing else runs. Loading says
`ModelLoading` (the jobs waiting on it) and `ModelLoaded` (what is resident now), so the bot
can show "loading model X" and route by what each worker holds. Which jobs a worker gets,
so that swaps stay rare, is the bot's scheduling (`bot/jobs`), not decided here.

A model that fails to load fails only the jobs that need it, with a plain message (the
details go to the log); a job for a model this worker does not serve fails the same way.
No torch here (the step loop's modules are imported when it runs): the engine class the
worker was given does the loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.request import EngineInfo, GenerationRequest, GenerationResult, InputError
from pipeline.served_models import ModelSpec
from pipeline.worker_protocol import ModelLoaded, ModelLoading

if TYPE_CHECKING:
    from pipeline.stepbatch import StepHooks

log = logging.getLogger(__name__)

NOT_SERVED = (
    "The model {name!r} is not available on the GPU this job went to, so no picture was "
    "made and nothing was counted. Pick another model (see /models) or try again later."
)
LOAD_FAILED = (
    "The model {name!r} could not be loaded on the GPU, so no picture was made and nothing "
    "was counted. Pick another model (see /models); the operator can see why in the log."
)
NO_STEP_PATH = "model {name!r} has no step-batching path; its job runs again on the call path"


class ModelPool:
    """The worker's engine when it serves catalogue models: quacks like `Engine` for the
    worker (`info`, `steps_ok`, `run_steps`, `generate`). Not thread-safe."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        load: Callable[[ModelSpec], Any],
        *,
        resident_models: int = 1,
        notify: Callable[[object], Any] = lambda message: None,
        job_cancelled: type[BaseException] | None = None,
    ) -> None:
        if not specs:
            raise ValueError("a model pool needs at least one model")
        self.specs = {spec.name: spec for spec in specs}
        self.default = specs[0].name
        self.capacity = max(1, int(resident_models))
        self._load_engine = load
        self.notify = notify
        self.job_cancelled = job_cancelled
        self.loaded: OrderedDict[str, Any] = OrderedDict()
        """Resident engines by model name, least recently used first."""
        self.steps_known: dict[str, bool] = {}
        """Whether each model loaded so far has a step path (SD 1.x/2.x img2img)."""
        self.loads = 0
        self._info: EngineInfo | None = None
        self._sets: list[Any] = []
        """The step path's sets (drained ones too, until the next opens): they hold their
        model's pipeline, so an unload drops them first."""

    # -- start and what the worker reads --------------------------------------------------
    def start(self) -> ModelPool:
        """Load the default model, as a worker always did at start; raises if it fails
        (the worker then says `LoadFailed` and exits)."""
        engine = self._load_engine(self.specs[self.default])
        self._info = engine.info
        self._keep(self.default, engine)
        return self

    @property
    def info(self) -> EngineInfo:
        """The default model's info, with the served and resident models."""
        assert self._info is not None, "start() first"
        return dataclasses.replace(
            self._info, models=tuple(self.specs), resident=tuple(self.loaded)
        )

    @property
    def steps_ok(self) -> bool:
        return self.steps_known.get(self.default, False)

    def steps_for(self, req: GenerationRequest) -> bool:
        """Whether `req`'s model takes the step path (a model not loaded yet: assumed so)."""
        return self.steps_known.get(self.model_of(req), True)

    # -- the gate the step loop asks (`pipeline.stepsets.ModelGate`) ------------------------
    def model_of(self, req: GenerationRequest) -> str:
        return (getattr(req, "model", "") or self.default).lower()

    def is_resident(self, name: str) -> bool:
        return name in self.loaded

    def prepare(
        self,
        waiting: Sequence[GenerationRequest],
        busy: set[str],
        on_failed: Callable[[str, str], None] | None,
    ) -> set[str]:
        """Fail jobs of models not served, then load the model of the first waiting job
        whose model is not resident, if a place is free or a model can be unloaded: one
        with no running set (`busy`) that no job ahead of it waits for. One load per step
        boundary: the next waits for its own."""
        ended = self._unserved(waiting, on_failed)
        keep = set(busy)  # and the resident models of jobs ahead, not joined yet
        for req in waiting:
            name = self.model_of(req)
            if req.job_id in ended:
                continue
            if name in self.loaded:
                keep.add(name)
                continue
            if len(self.loaded) >= self.capacity and all(m in keep for m in self.loaded):
                return ended  # it waits for a running set to drain
            ids = [r.job_id for r in waiting if r.job_id not in ended and self.model_of(r) == name]
            message = self._swap_in(name, ids, keep)
            if message is None:
                return ended
            for job_id in ids:
                _fail(on_failed, job_id, message)
            ended.update(ids)
        return ended

    # -- the step path --------------------------------------------------------------------
    def run_steps(
        self,
        first: Sequence[GenerationRequest],
        hooks: StepHooks,
        *,
        max_batch: int,
        more: Callable[[], Sequence[GenerationRequest]] | None = None,
    ) -> None:
        """`Engine.run_steps` over the served models: sets per (model, shape)."""
        if len(self.specs) == 1:  # one model: its engine's own loop, jobs of others fail
            engine = self._use(self.default)

            def served(reqs: Sequence[GenerationRequest]) -> list[GenerationRequest]:
                ended = self._unserved(reqs, hooks.on_failed)
                return [r for r in reqs if r.job_id not in ended]

            more_served = (lambda: served(more())) if more is not None else None
            engine.run_steps(served(first), hooks, max_batch=max_batch, more=more_served)
            return
        from pipeline.stepsets import run_steps

        sets = self._sets = []  # for the LoRAs in use, and dropped with their model

        def new_set(req: GenerationRequest) -> Any:
            sets[:] = [each for each in sets if each.running]
            sets.append(self.loaded[self.model_of(req)].new_set(max_batch))
            return sets[-1]

        def load(req: GenerationRequest) -> Any:
            name = self.model_of(req)
            engine = self._use(name)
            if not engine.steps_ok:  # learnt at its load: the bot runs it again, call path
                if hooks.on_set_error is None:
                    raise ValueError(NO_STEP_PATH.format(name=name))
                hooks.on_set_error([req.job_id], ValueError(NO_STEP_PATH.format(name=name)))
                return None
            running = (ref.name for each in sets for job in each.running for ref in job.req.loras)
            return engine.row_input(req, running, hooks.on_failed)

        run_steps(new_set, first, hooks, load=load, more=more, gate=self)

    # -- the call path --------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_failed: Callable[[str, str], None] | None = None,
        **hooks: Any,
    ) -> list[GenerationResult]:
        """`Engine.generate` per model, in the order the batch names them; a model not
        loaded is loaded first (nothing else runs on this path, so any may make room)."""
        groups: dict[str, list[GenerationRequest]] = {}
        ended = self._unserved(requests, on_failed)
        for req in requests:
            if req.job_id not in ended:
                groups.setdefault(self.model_of(req), []).append(req)
        results: list[GenerationResult] = []
        stopped: BaseException | None = None
        for name, group in groups.items():
            if name not in self.loaded:
                message = self._swap_in(name, [r.job_id for r in group], set())
                if message is not None:
                    for req in group:
                        _fail(on_failed, req.job_id, message)
                    continue
            engine = self._use(name)
            try:
                results.extend(engine.generate(group, on_failed=on_failed, **hooks))
            except Exception as exc:
                if self.job_cancelled is None or not isinstance(exc, self.job_cancelled):
                    raise
                stopped = exc  # every job of this model's group was cancelled
        if stopped is not None and not results:
            raise stopped
        return results

    # -- loading and unloading ------------------------------------------------------------
    def _unserved(
        self, requests: Sequence[GenerationRequest], on_failed: Callable[[str, str], None] | None
    ) -> set[str]:
        ended = set()
        for req in requests:
            name = self.model_of(req)
            if name not in self.specs:
                log.warning("job %s asks for model %r, not served here", req.job_id, name)
                _fail(on_failed, req.job_id, NOT_SERVED.format(name=name))
                ended.add(req.job_id)
        return ended

    def _use(self, name: str) -> Any:
        self.loaded.move_to_end(name)
        return self.loaded[name]

    def _keep(self, name: str, engine: Any) -> None:
        self.loaded[name] = engine
        self.steps_known[name] = bool(getattr(engine, "steps_ok", False))
        self.loads += 1

    def _swap_in(self, name: str, job_ids: Sequence[str], busy: set[str]) -> str | None:
        """Load `name`, unloading least recently used models outside `busy` first to make
        room; None once loaded, else the plain message for its jobs."""
        while len(self.loaded) >= self.capacity:
            victim = next(m for m in self.loaded if m not in busy)
            self._unload(victim)
        spec = self.specs[name]
        log.info("loading model %s (%s) for jobs %s", name, spec.source, ", ".join(job_ids))
        self.notify(ModelLoading(name, tuple(job_ids)))
        started = time.perf_counter()
        try:
            engine = self._load_engine(spec)
        except Exception:
            log.exception("could not load model %s (%s)", name, spec.source)
            engine = None
        else:
            self._keep(name, engine)
            log.info(
                "model %s loaded in %.1f s; resident: %s",
                name, time.perf_counter() - started, ", ".join(self.loaded),
            )  # fmt: skip
        self.notify(ModelLoaded(name, tuple(self.loaded)))
        return None if engine is not None else LOAD_FAILED.format(name=name)

    def _unload(self, name: str) -> None:
        """Drop the engine and give its memory back before the next model loads."""
        log.info("unloading model %s (least recently used, none of its jobs runs)", name)
        pipe = getattr(self.loaded.pop(name), "pipe", None)
        self._sets[:] = [each for each in self._sets if each.pipe is not pipe]
        del pipe
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None:
            with contextlib.suppress(Exception):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def _fail(on_failed: Callable[[str, str], None] | None, job_id: str, message: str) -> None:
    if on_failed is None:
        raise InputError(message)
    on_failed(job_id, message)
