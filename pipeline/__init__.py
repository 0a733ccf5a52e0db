"""Image-to-image generation: request model, input preparation, engine, worker, fair queue.

Nothing in this package imports discord. Only `pipeline.engine` (and what it loads in the
worker process) imports torch or diffusers, so the bot can import the rest cheaply.
"""
