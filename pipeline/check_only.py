"""The last job of an Upscale ×2: the safety checker on the whole blended picture.

Each tile of an upscale is an ordinary img2img job, so the checker already saw every tile
at the model's size; it must also see the whole picture (a tile can look harmless where the
picture does not). The bot blends the tiles (`pipeline.tiling.blend`) and queues the result
as one more job of mode `UPSCALE`; the worker runs no model for it, only this: read the
picture at full size, check it, and write it as the result (or withhold it) through the
same `store_result` as every other job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from pipeline.request import (
    INPUT_MISSING,
    INPUT_UNREADABLE,
    GenerationRequest,
    GenerationResult,
    InputError,
)
from pipeline.results import store_result

log = logging.getLogger(__name__)


def check_pictures(
    engine: Any,
    requests: Sequence[GenerationRequest],
    *,
    on_failed: Callable[[str, str], None] | None = None,
) -> list[GenerationResult]:
    """Check each request's picture with the engine's checker (None: none is loaded) and
    store it as the job's result; an unreadable input fails only its own job."""
    results = []
    for req in requests:
        started = time.perf_counter()
        try:
            with Image.open(req.image_path) as src:
                picture = src.convert("RGB")
        except FileNotFoundError:
            message = INPUT_MISSING
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("job %s: picture %s is unreadable: %s", req.job_id, req.image_path, exc)
            message = INPUT_UNREADABLE
        else:
            checker = engine.checker
            flagged = checker.flags([picture])[0] if checker is not None else False
            seconds = time.perf_counter() - started
            checked = checker is not None
            result = store_result(
                req, picture, flagged, checked=checked, steps_run=0, steps_total=0, seconds=seconds
            )
            results.append(result)
            continue
        if on_failed is None:
            raise InputError(message)
        on_failed(req.job_id, message)
    return results
