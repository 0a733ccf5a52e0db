"""Image-to-image generation: request model, input preparation, engine, worker, fair queue.

Nothing in this package imports discord. Only `pipeline.engine` (and what it loads in the
worker process) imports torch or diffusers, so the bot can import the rest cheaply.
"""

from pipeline.quiet import quiet_library_noise

quiet_library_noise()  # every process that uses the pipeline (worker, CLI) starts quiet
