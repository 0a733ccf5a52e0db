"""What the worker's fork server imports once, before any worker is forked from it.

Importing torch, diffusers and transformers costs seconds of CPU; a fork server that did
it once (see `pipeline.worker.start_context`) makes every later worker start, the first
and each restart after a crash, a fork of a process that has them already. Nothing here
touches a device: importing torch does not initialise CUDA, so each forked worker still
initialises its device itself, as a spawned one would.
"""

from __future__ import annotations

import diffusers  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image  # noqa: F401

import pipeline.engine
import pipeline.worker_child  # noqa: F401
