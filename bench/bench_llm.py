"""Throughput of the LLM client against the local fake server with injected latency.

With a fixed per-request latency L and C requests in flight, no client can beat C / L requests
per second; the ratio measured / (C / L) shows how much of that bound the client reaches (1.0 =
all of it). The server runs in its own process so that its threads do not share a GIL with the
client being measured.

    .venv/bin/python bench/bench_llm.py                      # 200 ms, concurrency 1/16/64
    .venv/bin/python bench/bench_llm.py --latency 0.05 --concurrency 8 32 --requests 64 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from dataprep.llm import LLMClient, LLMConfig, LLMRequest

# The fake server is a test helper, kept out of the installed package; the bench runs from a
# checkout, so the repository root is put on the path to reach it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.fake_chat_server import FakeChatServer  # noqa: E402


def _serve(latency_s: float, ports: Any, stop: EventType) -> None:
    with FakeChatServer(latency_s=latency_s) as server:
        ports.put(server.port)
        stop.wait(timeout=1800)


def run_level(base_url: str, concurrency: int, n_requests: int, latency_s: float) -> dict[str, Any]:
    config = LLMConfig(
        model="fake-model",
        base_url=base_url,
        max_concurrency=concurrency,
        timeout_s=30,
        max_retries=0,  # a retry would hide a problem; the bench should see it as a failure
        cache_dir=None,  # every request must reach the server
    )
    stamp = time.time_ns()  # unique prompts per run, so nothing is answered twice
    requests = [
        LLMRequest(f"b{i}", [{"role": "user", "content": f"{stamp}-{i}：把这句话改写得更口语化。"}])
        for i in range(n_requests)
    ]
    with LLMClient(config) as client:
        cpu_started, started = time.process_time(), time.perf_counter()
        results = client.complete_many_sync(requests)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    failed = sum(not r.ok for r in results)
    measured = n_requests / elapsed
    bound = concurrency / latency_s
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "failed": failed,
        "seconds": round(elapsed, 3),
        "req_per_s": round(measured, 2),
        "bound_req_per_s": round(bound, 2),
        "ratio": round(measured / bound, 3),
        # client-side CPU per request (SDK + this package): with C requests answered in one
        # burst, each round costs about L + C * cpu, which is what keeps the ratio below 1
        "client_cpu_ms_per_req": round(cpu / n_requests * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per response")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--json", action="store_true", help="print one JSON object per level")
    args = parser.parse_args()
    if len(args.requests) != len(args.concurrency):
        parser.error("give one --requests count per --concurrency level")
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the bound is concurrency / latency)")
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency, ports, stop), daemon=True)
    server.start()
    try:
        base_url = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"
        if not args.json:
            print(f"fake server {base_url}, latency {args.latency * 1000:.0f} ms")
            print(
                f"{'conc':>5} {'reqs':>5} {'fail':>4} {'secs':>7} {'req/s':>8} "
                f"{'bound':>8} {'ratio':>6} {'cpu ms/req':>10}"
            )
        for concurrency, n_requests in zip(args.concurrency, args.requests, strict=True):
            row = run_level(base_url, concurrency, n_requests, args.latency)
            if args.json:
                print(json.dumps(row))
            else:
                print(
                    f"{row['concurrency']:>5} {row['requests']:>5} {row['failed']:>4} "
                    f"{row['seconds']:>7.2f} {row['req_per_s']:>8.1f} "
                    f"{row['bound_req_per_s']:>8.1f} {row['ratio']:>6.3f} "
                    f"{row['client_cpu_ms_per_req']:>10.2f}"
                )
    finally:
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
