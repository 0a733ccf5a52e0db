"""Messages between the bot process and the model worker process.

Everything here crosses a `multiprocessing` pipe, so every type is a frozen dataclass of
builtins and `pipeline.request` types: picklable, and unpickling never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.request import EngineInfo, GenerationRequest, GenerationResult


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


WorkerCommand = Run | Cancel | Stop


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
class Progress:
    """Denoising step `step` of `total` is done for every job of the running batch."""

    job_ids: tuple[str, ...]
    step: int
    total: int


@dataclass(frozen=True)
class Finished:
    """A job's PNG is written to `result.output_path`."""

    result: GenerationResult

    @property
    def job_id(self) -> str:
        return self.result.job_id


@dataclass(frozen=True)
class Failed:
    """A job raised; `message` is short and readable (no traceback)."""

    job_id: str
    message: str


@dataclass(frozen=True)
class Cancelled:
    """A job stopped because it was cancelled (or the worker was told to stop)."""

    job_id: str


@dataclass(frozen=True)
class BatchDone:
    """Every job of the batch has had its final event; the worker takes the next `Run`."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class WorkerDied:
    """The worker process ended while it still owed these jobs a final event.

    Made by the parent, never sent by the worker. `job_ids` may be empty (the worker died
    idle, or exited on purpose after an unrecoverable device error); either way the owner
    calls `WorkerClient.restart()`.
    """

    exitcode: int | None
    job_ids: tuple[str, ...]


WorkerEvent = Progress | Finished | Failed | Cancelled | BatchDone | WorkerDied
WorkerMessage = Ready | LoadFailed | Progress | Finished | Failed | Cancelled | BatchDone

__all__ = [
    "BatchDone",
    "Cancel",
    "Cancelled",
    "EngineInfo",
    "Failed",
    "Finished",
    "LoadFailed",
    "Progress",
    "Ready",
    "Run",
    "Stop",
    "WorkerCommand",
    "WorkerConfig",
    "WorkerDied",
    "WorkerEvent",
    "WorkerMessage",
]
