"""Messages between the bot process and the model worker process.

Everything here crosses a `multiprocessing` pipe, so every type is a frozen dataclass of
builtins and `pipeline.request` types: picklable, and unpickling never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.request import EngineInfo, GenerationRequest, GenerationResult
from pipeline.served_models import ModelSpec


@dataclass(frozen=True)
class WorkerConfig:
    """How the worker loads the model; the arguments of `Engine.load`."""

    model_id: str
    device: str = "auto"
    dtype: str = "auto"
    resolution: int | None = None
    compile: bool = False
    channels_last: bool = True
    safety_checker: str = "auto"  # auto | on | off
    safety_checker_id: str = "CompVis/stable-diffusion-safety-checker"
    mask_model_id: str | None = None
    """CLIPSeg for region masks; None: `/inpaint region:` is refused."""
    inpaint_model_id: str | None = None
    """A dedicated inpainting model; None: inpaint shares the loaded model's weights."""
    mask_threshold: float = 0.4
    mask_dilate: int = 8
    batching: str = "call"
    """`step`: iteration-level batching where the model supports it (`Engine.steps_ok`);
    `call`: one pipeline call per batch (the only path for other models and inpainting)."""
    max_batch: int = 1
    """Step batching: most jobs in the running set (the client's `free_slots`)."""
    max_loras_loaded: int = 8
    """LoRAs kept loaded as adapters on the model (least recently used unloaded first);
    MAX_LORAS_LOADED."""
    single_file_config: str | None = None
    """For a `model_id` that is one .safetensors checkpoint file: a diffusers folder or hub
    id with the component configs (the catalogue's `config`), so it loads offline."""
    models: tuple[ModelSpec, ...] = ()
    """The models this worker serves (WORKER_MODELS), its default first; empty: `model_id`
    alone, under the catalogue's name `default`."""
    resident_models: int = 1
    """Served models kept loaded at once (RESIDENT_MODELS; LRU, see `pipeline.models`)."""
    controlnet_edges: str | None = None
    """The ControlNet for `structure: edges` (hub id or folder), loaded next to the model;
    None: edges are not served (CONTROLNET_EDGES_ID, or the catalogue's `controlnet_edges`)."""
    controlnet_lines: str | None = None
    """The ControlNet for `structure: lines`; None: lines are not served."""
    structure_edges_low: int = 40
    structure_edges_high: int = 80
    structure_lines_contrast: int = 40
    """The map thresholds (`pipeline.structure.MapSettings`)."""
    preview: str = "off"
    """Live previews: auto | approx | taesd | off (PREVIEW; `pipeline.previews`)."""
    preview_interval_s: float = 3.0
    preview_model_id: str = ""
    preview_every_steps: int = 0


# -- commands: parent → worker ----------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """Generate these requests in one engine call."""

    batch: tuple[GenerationRequest, ...]


@dataclass(frozen=True)
class Cancel:
    """Stop this job at the next denoising step; the rest of its batch goes on."""

    job_id: str


@dataclass(frozen=True)
class Stop:
    """Cancel what runs and exit cleanly."""


@dataclass(frozen=True)
class Recall:
    """Step batching: hand this job back if it has not started (a fairer one arrived for
    its place); answered by `Recalled`, or ignored if it started (its `Started` says so)."""

    job_id: str


WorkerCommand = Run | Cancel | Stop | Recall


# -- start-up replies: worker → parent ----------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The model is loaded; the worker takes `Run` commands from now on."""

    info: EngineInfo


@dataclass(frozen=True)
class LoadFailed:
    """The model could not be loaded; the worker exits after sending this."""

    message: str


# -- events: worker → parent (and WorkerDied, made by the parent) --------------------------
@dataclass(frozen=True)
class Started:
    """The worker began this batch: from now on these jobs count as running, so a death
    fails them (a job submitted but never started is handed back as `unstarted`)."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    """Denoising step `step` of `total` is done for these jobs of the running batch (jobs
    that already had their final event, e.g. one cancelled mid-batch, are left out)."""

    job_ids: tuple[str, ...]
    step: int
    total: int
    previews: dict[str, bytes] = field(default_factory=dict)
    """Live previews of some of these jobs (JPEG bytes; b"": the checker hid it)."""


@dataclass(frozen=True)
class Finished:
    """A job's PNG is written to `result.output_path`."""

    result: GenerationResult

    @property
    def job_id(self) -> str:
        return self.result.job_id


@dataclass(frozen=True)
class Failed:
    """A job could not be made; `message` is a plain sentence for the user chosen by the
    worker (never exception text or a server path: those go to the worker's log).

    `retry`: the job itself did nothing wrong (a UNet call it shared failed, or the device
    broke, so its state is unknowable): its owner may run it again as a new attempt, and
    shows `message` only if that one fails too."""

    job_id: str
    message: str
    retry: bool = False


@dataclass(frozen=True)
class Cancelled:
    """A job stopped because it was cancelled (or the worker was told to stop)."""

    job_id: str


@dataclass(frozen=True)
class Recalled:
    """The job was handed back unstarted (after a `Recall`): untouched, its owner runs it
    later. Its Run's `BatchDone` no longer lists it."""

    job_id: str


@dataclass(frozen=True)
class BatchDone:
    """Every job of the batch has had its final event; the worker takes the next `Run`,
    unless `worker_exiting`: the device broke and the worker exits now (the client stays
    busy until the exit, then reports a `WorkerDied`, so no batch is sent into it)."""

    job_ids: tuple[str, ...]
    worker_exiting: bool = False


@dataclass(frozen=True)
class Exiting:
    """The device broke: the worker sends its jobs' final events, then exits. Sent before
    those events, so the client takes no job from then on: a job sent back to run again
    would otherwise be handed straight into the dying worker, and its Run's `BatchDone`
    would take it for one of its own."""


@dataclass(frozen=True)
class ModelLoading:
    """The worker starts loading a served model that is not resident (`pipeline.models`):
    these jobs wait for it (their status can say "loading model X")."""

    model: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModelLoaded:
    """A load ended: `resident` is what the worker holds now, least recently used first;
    `model` is in it if it loaded (else its jobs were failed with a plain message)."""

    model: str
    resident: tuple[str, ...]


@dataclass(frozen=True)
class WorkerDied:
    """The worker process ended while it still owed these jobs a final event.

    Made by the parent, never sent by the worker. `job_ids` are jobs that had started (they
    may have run partly: fail or retry them); `unstarted` were submitted but never started,
    or their batch could not be sent (a submit to a dead worker): untouched, run them
    again. Both may be empty (the worker died idle, or exited on purpose after an
    unrecoverable device error); either way the owner calls `WorkerClient.restart()`.
    """

    exitcode: int | None
    job_ids: tuple[str, ...]
    unstarted: tuple[str, ...] = ()


WorkerEvent = (
    Started | Progress | Finished | Failed | Cancelled | Recalled | BatchDone | WorkerDied
    | ModelLoading | ModelLoaded
)
WorkerMessage = (
    Ready | LoadFailed | Started | Progress | Finished | Failed | Cancelled | Recalled | BatchDone
    | Exiting | ModelLoading | ModelLoaded
)

__all__ = [
    "BatchDone",
    "Cancel",
    "Cancelled",
    "EngineInfo",
    "Exiting",
    "Failed",
    "Finished",
    "LoadFailed",
    "ModelLoaded",
    "ModelLoading",
    "ModelSpec",
    "Progress",
    "Ready",
    "Recall",
    "Recalled",
    "Run",
    "Started",
    "Stop",
    "WorkerCommand",
    "WorkerConfig",
    "WorkerDied",
    "WorkerEvent",
    "WorkerMessage",
]
