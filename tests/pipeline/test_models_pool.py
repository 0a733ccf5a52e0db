"""The swap rule of `ModelPool.prepare`, with stand-in engines (no model): which model is
unloaded for a waiting job, and when the job must wait instead. (The real worker with two
tiny models: test_worker_models.py.)"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models import ModelPool
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.served_models import ModelSpec
from pipeline.worker_protocol import ModelLoaded, ModelLoading


@dataclass
class StandIn:
    name: str
    steps_ok: bool = True

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(self.name, "cpu", "fp32", 64, "P")

    @property
    def pipe(self) -> str:
        return f"pipe of {self.name}"


def pool(capacity: int, broken: str = "") -> tuple[ModelPool, list[object]]:
    said: list[object] = []

    def load(spec: ModelSpec) -> StandIn:
        if spec.name == broken:
            raise OSError(f"{spec.source}: no such folder")
        return StandIn(spec.name)

    specs = [ModelSpec(n, f"/models/{n}") for n in ("a", "b", "c")]
    return ModelPool(specs, load, resident_models=capacity, notify=said.append).start(), said


def job(job_id: str, model: str) -> GenerationRequest:
    return GenerationRequest(job_id, "", "p", 1.0, 1, 2, 7.5, "", model=model)


def test_a_model_a_job_ahead_waits_for_is_not_unloaded() -> None:
    p, said = pool(2)
    p.prepare([job("1", "b")], set(), None)  # b loads beside a
    assert list(p.loaded) == ["a", "b"]
    failed: list[tuple[str, str]] = []
    waiting = [job("2", "b"), job("3", "c")]
    # a runs, b's job has not joined yet: c must wait, not unload b
    assert p.prepare(waiting, {"a"}, lambda *f: failed.append(f)) == set()
    assert list(p.loaded) == ["a", "b"] and p.loads == 2
    # a drained: a (least recently used, wanted by nobody) makes room for c
    assert p.prepare(waiting, set(), lambda *f: failed.append(f)) == set()
    assert list(p.loaded) == ["b", "c"] and failed == []
    assert said[-2:] == [ModelLoading("c", ("3",)), ModelLoaded("c", ("b", "c"))]
    assert p.info.resident == ("b", "c") and p.info.models == ("a", "b", "c")


def test_jobs_of_an_unserved_or_broken_model_fail_and_the_rest_stay() -> None:
    p, said = pool(1, broken="b")
    failed: list[tuple[str, str]] = []
    waiting = [job("1", "zz"), job("2", "b"), job("3", "b"), job("4", "")]
    ended = p.prepare(waiting, set(), lambda *f: failed.append(f))
    assert ended == {"1", "2", "3"}
    assert [f[0] for f in failed] == ["1", "2", "3"]
    assert "'zz' is not available" in failed[0][1] and "'b' could not be loaded" in failed[1][1]
    assert said == [  # a made room for b, which failed; job 4 ("": a) loads it again
        ModelLoading("b", ("2", "3")), ModelLoaded("b", ()),
        ModelLoading("a", ("4",)), ModelLoaded("a", ("a",)),
    ]  # fmt: skip
