"""What happens to every generated picture, whichever path made it (pipeline call, step
loop, inpainting): a flagged one is withheld (never written) unless its request allows
it, the rest are written as PNG, and the job gets a `GenerationResult` saying which."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from pipeline.request import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


def store_result(
    req: GenerationRequest,
    image: Image.Image,
    flagged: bool,
    *,
    checked: bool,
    steps_run: int,
    steps_total: int,
    seconds: float,
) -> GenerationResult:
    """Write `image` to the request's output path unless the safety checker `flagged` it
    and the request does not allow that; say what was done. `checked`: a checker looked
    at it (False: none is loaded, so `flagged` means nothing), recorded as `filtered`."""
    withheld = flagged and not req.allow_nsfw
    path = ""
    if withheld:
        log.info("job %s: the safety checker flagged the image; withheld", req.job_id)
    else:
        target = Path(req.output_path)
        tmp = target.with_name(f".{target.name}.part")  # a failed write leaves nothing
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(tmp, format="PNG")
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        path = str(target)
    return GenerationResult(
        job_id=req.job_id,
        output_path=path,
        seed=req.seed,
        steps_run=steps_run,
        steps_total=steps_total,
        width=image.width,
        height=image.height,
        seconds=seconds,
        nsfw=flagged,
        withheld=withheld,
        filtered=checked,
    )
