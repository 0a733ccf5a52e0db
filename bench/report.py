"""Statistics and printing for the benchmark: percentiles, rates and the final JSON line."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0–100); NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def verdict(value: float, target: float) -> str:
    """'ok' or 'MISSED' against a ≥ target."""
    return "ok" if value >= target else "MISSED"


def seconds_text(values: Sequence[float]) -> str:
    """`p50 1.23 s  p95 4.56 s` of a list of durations."""
    return f"p50 {percentile(values, 50):.2f} s  p95 {percentile(values, 95):.2f} s"


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def rounded(value: Any, digits: int = 3) -> Any:
    """Round floats (recursively) so the JSON line stays short; NaN becomes null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def json_line(figures: dict[str, Any]) -> str:
    return json.dumps(rounded(figures), separators=(", ", ": "))


TARGETS = {
    "ratio_unbatched": 0.90,
    "ratio_batched": 1.25,
    "ratio_on_off": 0.95,
    "ratio_mixed": 1.20,
    "ratio_uniform": 0.95,
    "ratio_redis_local": 0.90,
    "ratio_2workers": 1.7,
    "ratio_upscale": 1.25,
    "ratio_lora_mixed": 1.10,
    "lora_overhead": 0.75,
    "ratio_structure_mixed": 1.15,
    "ratio_preview": 0.95,
}


def _target(name: str, value: float, wall: float) -> str:
    target = TARGETS[name]
    return (
        f"    ratio         {value:.3f}   target ≥ {target:.2f}  {verdict(value, target)}"
        f"   (by wall time {wall:.3f})"
    )


def _render_mixed(
    opts: Any, mx: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Scenario [5]: iteration-level batching against same-key batching (wall-clock rates:
    step batching has no per-call time to take a median of)."""
    lines = [
        *lines,
        "",
        f"[5] {opts.small_size} px, {opts.n_small} jobs queued, MAX_BATCH={opts.max_batch}: "
        "BATCHING=step vs BATCHING=call",
    ]
    for load, what in (
        ("mixed", "strengths 0.35-0.8, steps 20/30, two aspect ratios"),
        ("uniform", "one shape and step plan"),
    ):
        s, c = mx[f"step_{load}"], mx[f"call_{load}"]
        lines += [
            f"  {load}: {what}",
            f"    step  {s['ips_wall']:.3f} img/s  {s['image_steps_per_s']:.2f} image-steps/s"
            f"  latency p50 {s['latency_p50_s']:.2f} s",
            f"    call  {c['ips_wall']:.3f} img/s  {c['image_steps_per_s']:.2f} image-steps/s"
            f"  latency p50 {c['latency_p50_s']:.2f} s  worker calls of {c['batch_sizes']}",
            _target(f"ratio_{load}", mx[f"ratio_{load}"], mx[f"ratio_{load}"]),
        ]
        figures = figures | {
            f"ratio_{load}": mx[f"ratio_{load}"],
            f"ratio_{load}_median": mx[f"ratio_{load}_median"],
            f"step_{load}_image_steps_per_s": s["image_steps_per_s"],
            f"call_{load}_image_steps_per_s": c["image_steps_per_s"],
        }
    return lines, figures


def _mode(label: str, m: dict[str, Any], extra: str = "") -> str:
    return (
        f"    {label:<13} {m['ips']:7.3f} img/s  ({m['per_image_p50_s']:.2f} s/img p50; "
        f"wall {m['ips_wall']:.3f} img/s){extra}"
    )


def _latency(m: dict[str, Any]) -> str:
    return (
        f"    job latency   queued → delivered p50 {m['latency_p50_s']:.2f} s  "
        f"p95 {m['latency_p95_s']:.2f} s; dispatched → delivered p50 {m['service_p50_s']:.2f} s"
    )


def render(opts: Any, r: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The report's lines and the headline figures (for the JSON line) of a run's results."""
    from pipeline.request import plan_steps

    total, effective = plan_steps(opts.steps, opts.strength)
    engine, direct = r.get("engine"), r["direct_info"]
    lines = [
        "",
        f"model {r['model']} ({getattr(engine, 'pipeline_class', '?')})",
        f"worker on {getattr(engine, 'device', '?')}/{getattr(engine, 'dtype', '?')} "
        f"(compile={opts.compile}, channels_last={opts.channels_last}); direct loop on "
        f"{direct['device']}/{direct['dtype']}; {direct['threads']} torch threads, "
        f"{r['cpus']} CPUs",
        f"{total} steps × strength {opts.strength} → {effective} denoising steps, guidance "
        f"{opts.guidance}; {opts.rounds} rounds per scenario, modes alternating",
        "img/s = 1 / median seconds per image (wall = images / total time; see docs/benchmarks.md)",
    ]
    figures: dict[str, Any] = {
        "device": getattr(engine, "device", None),
        "dtype": getattr(engine, "dtype", None),
        "denoising_steps": effective,
    }
    if "big" in r:
        b = r["big"]
        d, f, fb = b["direct"], b["full"], b["batched"]
        o = b["outputs"]
        same = (
            "identical"
            if o["max"] == 0
            else f"differ by at most {o['max']:.0f}/255 in {o['share']:.2%} of values"
        )
        lines += [
            "",
            f"[1] {opts.size} px, batching off (MAX_BATCH=1): {f['images']} images per path",
            _mode("direct loop", d),
            _mode("full path", f),
            _target("ratio_unbatched", b["ratio_unbatched"], b["ratio_unbatched_wall"]),
            _latency(f),
            f"    first image, direct loop vs full path: {same}",
            "",
            f"[3] {opts.size} px, batching on (MAX_BATCH={opts.max_batch}) vs off, full path",
            _mode("batched", fb, f"  worker calls of {fb['batch_sizes']}"),
            _target("ratio_on_off", b["ratio_on_off"], b["ratio_on_off_wall"]),
            _latency(fb),
        ]
        figures |= {
            "ratio_unbatched": b["ratio_unbatched"],
            "ratio_on_off": b["ratio_on_off"],
            "ratio_unbatched_wall": b["ratio_unbatched_wall"],
            "ratio_on_off_wall": b["ratio_on_off_wall"],
            "direct_ips": d["ips"],
            "full_ips": f["ips"],
            "full_batched_ips": fb["ips"],
            "latency_p50_s": f["latency_p50_s"],
            "latency_p95_s": f["latency_p95_s"],
            "first_image_max_diff": o["max"],
        }
    if "small" in r:
        s = r["small"]
        d, fb = s["direct"], s["batched"]
        lines += [
            "",
            f"[2] {opts.small_size} px, {opts.n_small} same-shape jobs queued, MAX_BATCH="
            f"{opts.max_batch} vs the direct loop unbatched: {fb['images']} images per path",
            _mode("direct loop", d),
            _mode("full batched", fb, f"  worker calls of {fb['batch_sizes']}"),
            _target("ratio_batched", s["ratio_batched"], s["ratio_batched_wall"]),
            _latency(fb),
        ]
        figures |= {
            "ratio_batched": s["ratio_batched"],
            "ratio_batched_wall": s["ratio_batched_wall"],
            "direct_small_ips": d["ips"],
            "full_batched_small_ips": fb["ips"],
            "batched_latency_p50_s": fb["latency_p50_s"],
            "batched_latency_p95_s": fb["latency_p95_s"],
        }
    if "scaleout" in r:
        sc = r["scaleout"]
        lines += [
            "",
            f"[4] scale-out through Valkey, {opts.size} px, MAX_BATCH=1: {opts.n} images a round",
            _mode("local worker", sc["local"]),
            _mode("1 remote", sc["redis"]),
            _target("ratio_redis_local", sc["ratio_redis_local"], sc["ratio_redis_local_wall"]),
            _latency(sc["redis"]),
            _mode("1 worker, 1t", sc["one_worker"]),
            _mode("2 workers, 1t", sc["two_workers"], f"  served by {sc['workers_served']}"),
            _target("ratio_2workers", sc["ratio_2workers"], sc["ratio_2workers_wall"]),
        ]
        figures |= {
            "ratio_redis_local": sc["ratio_redis_local"],
            "ratio_2workers": sc["ratio_2workers"],
            "ratio_redis_local_wall": sc["ratio_redis_local_wall"],
            "ratio_2workers_wall": sc["ratio_2workers_wall"],
        }
    if "fleet" in r:
        from bench.fleet import render_fleet

        lines, figures = render_fleet(r["fleet"], lines, figures)
    if "mixed" in r:
        lines, figures = _render_mixed(opts, r["mixed"], lines, figures)
    if "upscale" in r:
        from bench.upscale import render_upscale

        lines, figures = render_upscale(r["upscale"], lines, figures)
    if "preview" in r:
        from bench.previews import render_preview

        lines, figures = render_preview(r["preview"], lines, figures)
    if "loras" in r:
        from bench.loras import render_loras

        lines, figures = render_loras(r["loras"], lines, figures)
    if "swaps" in r:
        from bench.swaps import render_swaps

        lines, figures = render_swaps(r["swaps"], lines, figures)
    if "structure" in r:
        from bench.structure import render_structure

        lines, figures = render_structure(r["structure"], lines, figures)
    if "mixedsweep" in r:
        ms = r["mixedsweep"]
        lines += [
            "",
            f"[mixed sweep] {opts.size} px, {opts.n_sweep} mixed jobs a round (strengths, steps, "
            "two aspect ratios), BATCHING=step",
            "    MAX_BATCH  img/s  image-steps/s  × first  latency p50/p95 s",
        ]
        for b, row in ms.items():
            lines.append(
                f"    {b:>9}  {row['ips_wall']:>5.2f}  {row['image_steps_per_s']:>13.2f}  "
                f"{row['ratio_to_first']:>7.2f}  {row['latency_p50_s']:>7.2f}/"
                f"{row['latency_p95_s']:.2f}"
            )
        figures["mixed_sweep"] = {
            b: {k: row[k] for k in ("ips_wall", "image_steps_per_s", "ratio_to_first")}
            for b, row in ms.items()
        }
    if "sweep" in r:
        sw = r["sweep"]
        lines += [
            "",
            f"[sweep] {opts.size} px, {opts.n_sweep} queued jobs a round; direct loop unbatched "
            f"{sw['direct']['ips']:.3f} img/s",
            "    MAX_BATCH  full img/s  ratio  direct same-batch img/s  latency p50/p95 s  "
            "lag p99 ms",
        ]
        for b in opts.sweep:
            row = sw[str(b)]
            lines.append(
                f"    {b:>9}  {row['ips']:>10.3f}  {row['ratio']:>5.2f}  "
                f"{row['direct_batched_ips']:>23.3f}  {row['latency_p50_s']:>7.2f}/"
                f"{row['latency_p95_s']:<8.2f}  {row['lag_p99_ms']:>10.2f}"
            )
        keys = ("ips", "ratio", "direct_batched_ips", "latency_p50_s", "lag_p99_ms")
        figures["sweep"] = {str(b): {k: sw[str(b)][k] for k in keys} for b in opts.sweep}
        figures["sweep"]["direct_ips"] = sw["direct"]["ips"]
    lag, rss = r["lag"], r["rss"]
    lag_max = max(lag, default=math.nan)
    lines += [
        "",
        f"event-loop lag while the worker is busy (10 ms ticker, {len(lag)} ticks): "
        f"p50 {percentile(lag, 50):.2f} ms  p99 {percentile(lag, 99):.2f} ms  max {lag_max:.2f} ms",
        "peak RSS: bot side {:.0f} MiB{}, worker {:.0f} MiB, direct loop {:.0f} MiB".format(
            mib(rss.get("bot", 0)),
            " (torch imported!)" if r.get("bot_side_torch") else " (no torch)",
            mib(rss.get("worker", 0)),
            mib(rss.get("direct", 0)),
        ),
    ]
    figures |= {
        "lag_p50_ms": percentile(lag, 50),
        "lag_p99_ms": percentile(lag, 99),
        "lag_max_ms": lag_max,
        "rss_bot_mib": mib(rss.get("bot", 0)),
        "rss_worker_mib": mib(rss.get("worker", 0)),
        "rss_direct_mib": mib(rss.get("direct", 0)),
        "bot_side_torch": bool(r.get("bot_side_torch")),
    }
    if "burst" in r:
        bu = r["burst"]
        lines += [
            f"two-guild burst (A queues 6, then B 2): MAX_BATCH=1 served {bu['unbatched']}",
            f"{'':>39} MAX_BATCH={opts.max_batch} served {bu['batched']}",
        ]
        figures |= {"burst_order": bu["unbatched"], "burst_order_batched": bu["batched"]}
    others = r["others_cores"]
    lines.append(
        f"other programs used {others:.2f} of {r['cpus']} CPUs on average during the run"
        + ("  (busy machine: figures are noisy)" if others > 0.25 else "")
    )
    starts = ", ".join(f"{k} {v:.1f}" for k, v in r.get("starts", {}).items())
    warm = ", ".join(f"{k} {v:.2f}" for k, v in r.get("warmups", {}).items())
    lines.append(f"start-up s (model load; COMPILE warm-up in the worker): {starts}")
    if warm:
        lines.append(f"first calls s (untimed warm-up): {warm}")
    figures |= {
        "worker_start_s": max(
            (v for k, v in r.get("starts", {}).items() if k.startswith("worker")),
            default=math.nan,
        ),
        "direct_start_s": r.get("starts", {}).get("direct", math.nan),
    }
    if r.get("interrupted"):
        lines.append("INTERRUPTED: only the sections shown above finished")
        figures["interrupted"] = True
    lines.append(f"total {r['seconds']:.0f} s")
    missed = [k for k, t in TARGETS.items() if k in figures and not figures[k] >= t]
    missed += figures.pop("fleet_missed", [])
    figures |= {"others_cpus": others, "seconds": r["seconds"], "targets_missed": missed}
    return lines, figures
