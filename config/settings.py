"""Every setting the bot and the pipeline read, with its documented default.

Values come from the environment and an optional `.env` file. A bad value stops the
program at start with the field's name and what is allowed (see `load_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.catalogue import Catalogue, CatalogueError, ModelEntry, load_catalogue

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"


class Settings(BaseSettings):
    """The bot's configuration. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)
    _catalogue: Catalogue | None = PrivateAttr(None)
    _resolution_setting: int | None = PrivateAttr(None)

    # Discord connection
    discord_token: SecretStr = Field(SecretStr(""), description="Bot token; never logged.")
    discord_api_base: str = Field(DISCORD_API_BASE, description="REST base URL (or a proxy).")
    discord_gateway_url: str = Field(DISCORD_GATEWAY_URL, description="Gateway URL (or a proxy).")
    dev_guild_id: int | None = Field(None, description="Sync commands to this guild only.")

    # Model and device
    model_id: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="HuggingFace hub id or local diffusers folder.",
    )
    models_file: Path | None = Field(
        None,
        description="A TOML catalogue of models and LoRAs members choose from (docs/operators.md "
        '"Models and LoRAs"); unset: MODEL_ID alone. A mistake in it stops the bot and the '
        "workers at start with one line naming the file, the entry and the rule.",
    )
    worker_models: str = Field(
        "",
        description="Comma-separated catalogue names a worker serves (its first is its "
        "default); empty: the whole catalogue, its default first. An unknown name stops the "
        "worker at start.",
    )
    resident_models: int = Field(
        1,
        ge=1,
        le=16,
        description="Served models a worker keeps loaded at once (least recently used "
        "unloaded first, once none of its jobs runs).",
    )
    max_loras_per_job: int = Field(
        4, ge=1, le=16, description="Most <lora:…> tags one prompt may use."
    )
    max_loras_loaded: int = Field(
        8, ge=1, le=64, description="LoRAs a worker keeps loaded per model (LRU)."
    )
    swap_window: int = Field(
        8,
        ge=0,
        le=1000,
        description="Swap rule: how many jobs of models a GPU has loaded may go ahead of a "
        "job whose model it would have to load (0: strict fair order, a load per change).",
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field("auto", description="Where to run.")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        "auto", description="auto: fp16 on CUDA/MPS, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the UNet (slow first run).")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA.")
    default_steps: int = Field(30, ge=1, le=150, description="Steps when a user gives none.")
    default_guidance: float = Field(7.5, ge=0.0, le=30.0, description="Classifier-free guidance.")
    resolution: int | None = Field(
        None, ge=64, le=2048, description="Long side in px; default: the model's native size."
    )
    max_batch: int = Field(4, ge=1, le=16, description="Most compatible jobs in one call.")
    batching: Literal["step", "call"] = Field(
        "step",
        description="step: iteration-level batching for SD 1.x/2.x/Turbo img2img (jobs of one "
        "size share every UNet call whatever their strength, steps and guidance; up to "
        "MAX_BATCH jobs, new ones join between steps); call: one pipeline call per batch of "
        "same-size, same-steps, same-guidance jobs (always used for other models and inpaint).",
    )

    # Safety
    safety_checker: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: the model's checker, else SAFETY_CHECKER_ID, else unfiltered (loud "
        "warning); on: refuse to start without one; off: no checker (one warning).",
    )
    safety_checker_id: str = Field(
        "CompVis/stable-diffusion-safety-checker",
        description="Standalone checker for models that ship none (hub id or local folder).",
    )
    blocked_words: str = Field(
        "", description="Comma-separated words refused in prompts on every server."
    )

    # Inpainting (see docs/operators.md "Inpainting settings")
    mask_model_id: str = Field(
        "CIDAS/clipseg-rd64-refined",
        description="CLIPSeg model turning /inpaint region words into a mask (hub id or local "
        "folder); empty: no region masks. A load failure only disables region masks.",
    )
    inpaint_model_id: str | None = Field(
        None,
        description="Dedicated inpainting model (9-channel UNet) loaded at start; default: "
        "inpaint with MODEL_ID's weights (shared, no second copy).",
    )
    mask_blur: int = Field(
        8, ge=0, le=64, description="Feather (px) of the mask the result is blended through."
    )
    mask_threshold: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="CLIPSeg probability from which a pixel belongs to the region words.",
    )
    mask_dilate: int = Field(
        8, ge=0, le=128, description="Region masks are grown by this many px (of the result)."
    )

    # Structure (ControlNet): the one-model set-up; a MODELS_FILE entry names its own
    controlnet_edges_id: str | None = Field(
        None, description="ControlNet for structure:edges (Canny) on MODEL_ID; unset: not offered."
    )
    controlnet_lines_id: str | None = Field(
        None,
        description="ControlNet for structure:lines (line art) on MODEL_ID; unset: not offered.",
    )
    structure_edges_low: int = Field(
        40, ge=1, le=255, description="Edge map: weaker gradients (of 255) join only strong edges."
    )
    structure_edges_high: int = Field(
        80, ge=1, le=255, description="Edge map: a gradient (of 255) above this is always an edge."
    )
    structure_lines_contrast: int = Field(
        40, ge=1, le=255, description="Line map: this much darker than the ground is a stroke."
    )

    # Input limits
    max_input_bytes: int = Field(10_000_000, ge=1, description="Largest accepted upload.")
    min_input_side: int = Field(256, ge=1, description="Smallest accepted short side in px.")
    max_decodes: int = Field(2, ge=1, le=64, description="Uploads decoded at the same time.")
    max_stored_side: int = Field(
        2048, ge=256, le=8192, description="Inputs are stored with at most this long side."
    )
    upscale_max_side: int = Field(
        2048,
        ge=256,
        le=8192,
        description="Upscale ×2: the longest side an upscaled picture may have; larger "
        "requests are refused.",
    )

    # Storage
    data_dir: Path = Field(Path("./data"), description="SQLite database and image files.")
    storage_max_gb: float = Field(20.0, gt=0, description="Prune oldest image files above this.")

    # Queue caps
    max_jobs_per_user: int = Field(3, ge=1, description="Waiting + running jobs per user.")
    max_queue_per_guild: int = Field(25, ge=1, description="Waiting + running jobs per server.")
    max_queue_total: int = Field(200, ge=1, description="Waiting + running jobs in total.")

    # Quotas (rolling 24 h)
    quota_user_daily: int = Field(20, ge=0, description="Images per user per 24 h.")
    quota_guild_daily: int = Field(200, ge=0, description="Images per server per 24 h.")
    quota_user_ceiling: int = Field(100, ge=0, description="Highest per-user limit admins set.")
    quota_guild_ceiling: int = Field(1000, ge=0, description="Highest per-server limit admins set.")

    # Worker behaviour
    progress_interval_s: float = Field(2.0, ge=0.0, description="Least time between edits.")
    worker_start_timeout_s: float = Field(600.0, gt=0, description="Model load time limit.")

    # Live previews (issue 29; docs/operators.md "Live previews")
    preview: Literal["auto", "approx", "taesd", "off"] = Field(
        "auto",
        description="Live previews in the running job's status message: approx (linear latent "
        "projection, free), taesd (the tiny autoencoder PREVIEW_MODEL_ID, sharper), auto "
        "(taesd where it loads, else approx) or off. Blurred where no safety checker runs.",
    )
    preview_interval_s: float = Field(
        3.0, gt=0, description="Least time between two previews of one job."
    )
    preview_model_id: str = Field(
        "",
        description="The tiny autoencoder for PREVIEW=taesd/auto (hub id or folder); empty: "
        "madebyollin/taesd, or madebyollin/taesdxl for SDXL models.",
    )
    preview_every_steps: int = Field(
        0, ge=0, description="Bench/test knob: a preview every N steps instead of by time (0: off)."
    )

    # Scale-out: where the workers are (docs/operators.md "Scale-out")
    worker_backend: Literal["local", "redis"] = Field(
        "local",
        description="local: the bot spawns one worker process; redis: any number of "
        "`python -m pipeline worker` processes, anywhere, reached through REDIS_URL.",
    )
    redis_url: SecretStr = Field(
        SecretStr(""),
        description="Valkey or Redis (6.2 or newer) URL, e.g. redis://:password@host:6379/0, "
        "for WORKER_BACKEND=redis and for workers; never logged with its password.",
    )
    worker_heartbeat_s: float = Field(
        15.0, gt=0, description="A remote worker not heard from for this long is dead."
    )
    worker_silence_s: float = Field(
        300.0, gt=0, description="A remote worker with jobs but no event for this long is dead."
    )
    worker_id: str = Field("", description="A remote worker's name; default host-pid.")

    # Operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve /metrics and /healthz here (off by default)."
    )
    shard_count: int | None = Field(
        None, ge=1, description="Gateway shards; default: Discord's recommendation."
    )

    @field_validator("discord_api_base", "discord_gateway_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must start with http://, https://, ws:// or wss://")
        return value.rstrip("/") if value.startswith("http") else value

    @model_validator(mode="after")
    def _caps_ordered(self) -> Settings:
        pairs = (
            ("max_jobs_per_user", "max_queue_per_guild"),
            ("max_queue_per_guild", "max_queue_total"),
            ("quota_user_daily", "quota_user_ceiling"),
            ("quota_guild_daily", "quota_guild_ceiling"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low.upper()} must not exceed {high.upper()}")
        return self

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Settings:
        if self.worker_backend == "redis" and not self.redis_url.get_secret_value():
            raise ValueError("WORKER_BACKEND=redis needs REDIS_URL")
        return self

    @property
    def blocked_word_list(self) -> list[str]:
        """BLOCKED_WORDS split on commas, blanks dropped (normalised where they are used)."""
        return [w.strip() for w in self.blocked_words.split(",") if w.strip()]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bot.sqlite3"

    @property
    def catalogue(self) -> Catalogue:
        """The models and LoRAs (MODELS_FILE, else MODEL_ID alone), read once; raises
        `CatalogueError` (`load_settings` turns it into the start error)."""
        if self._catalogue is None:
            self._catalogue = load_catalogue(self.models_file, self.model_id)
            if self.models_file is not None:
                self._follow(self._catalogue.default_model)
        return self._catalogue

    @property
    def single_file_config(self) -> str | None:
        """The default model's `config` (a single-file checkpoint's component configs), for
        the workers: like every worker setting, read under its WorkerConfig name."""
        return self.catalogue.default_model.config

    @property
    def served_models(self) -> tuple[str, ...]:
        """WORKER_MODELS as catalogue names, the worker's default first (empty: the whole
        catalogue, its default first); raises `SettingsError` naming an unknown one."""
        catalogue = self.catalogue
        names = [n.strip().lower() for n in self.worker_models.split(",") if n.strip()]
        unknown = [n for n in names if n not in catalogue.models]
        if unknown:
            raise SettingsError(
                f"WORKER_MODELS: {unknown[0]!r} is not in the catalogue "
                f"(models: {', '.join(catalogue.models)})"
            )
        if not names:
            names = [catalogue.default, *catalogue.models]
        return tuple(dict.fromkeys(names))

    @property
    def resolution_setting(self) -> int | None:
        """RESOLUTION as set (before MODELS_FILE's default model overrode it): the size of
        a catalogue model that names none."""
        self.catalogue  # noqa: B018  (reading it applies the default model's own values)
        return self._resolution_setting if self.models_file is not None else self.resolution

    @property
    def controlnet_edges(self) -> str | None:
        """The default model's edges ControlNet (catalogue `controlnet_edges`, else
        CONTROLNET_EDGES_ID without MODELS_FILE), for the workers under its WorkerConfig
        name."""
        if self.models_file is not None:
            return self.catalogue.default_model.controlnet_edges
        return self.controlnet_edges_id

    @property
    def controlnet_lines(self) -> str | None:
        """The default model's lines ControlNet (catalogue `controlnet_lines`, else
        CONTROLNET_LINES_ID without MODELS_FILE)."""
        if self.models_file is not None:
            return self.catalogue.default_model.controlnet_lines
        return self.controlnet_lines_id

    def _follow(self, model: ModelEntry) -> None:
        """With MODELS_FILE, its default model is the one the workers load and jobs run on;
        its own steps, guidance and resolution win over DEFAULT_STEPS, DEFAULT_GUIDANCE and
        RESOLUTION (which stay the defaults for what it leaves unset)."""
        self.model_id = model.source
        self._resolution_setting = self.resolution
        if model.steps is not None:
            self.default_steps = model.steps
        if model.guidance is not None:
            self.default_guidance = model.guidance
        if model.resolution is not None:
            self.resolution = model.resolution


class SettingsError(Exception):
    """A setting has a value the bot cannot use; the message names the field."""


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one readable error per field.

    The message names the field and the rule, never the value: a value may be a secret (or
    the whole input, token included, for a rule that spans fields)."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.catalogue  # noqa: B018  (read now: a catalogue mistake stops the start)
        settings.served_models  # noqa: B018  (and so does an unknown WORKER_MODELS name)
        return settings
    except CatalogueError as exc:
        raise SettingsError(f"MODELS_FILE: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(p) for p in err["loc"]).upper() or "SETTINGS"
            lines.append(f"{field}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
