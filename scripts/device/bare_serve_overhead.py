"""What Ray Serve and the HTTP client cost without a model: a bare FastAPI-ingress deployment returns a body of
1 KB / 500 KB / 3.15 MB (a 1024 px PNG at zlib level 0), timed from the client, sequential requests, with httpx's
AsyncClient and with aiohttp's ClientSession (the load test's client), through Ray Serve's proxy and straight to the
replica (direct ingress, as `serve.py --direct_ingress`). Each body either `kept` (the same bytes object every
time, as in Ray's own benchmarks) or `fresh` (a new one per request, as the service's encoder makes: the copy that
makes it is timed in the replica and taken out of the latency, so both rows are the trip alone). Any machine with
Ray Serve:
    python scripts/device/bare_serve_overhead.py --out logs/serve_client_overhead.csv
Columns: path (proxy, direct), client, body (kept, fresh), body_bytes, n, p50_ms, p95_ms (client latency: send to the
body's last byte, minus the fresh body's making).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # before Ray starts: the replica also listens on its own port
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402
from starlette.responses import Response  # noqa: E402

from quant_utils.csvio import provenance, write_csv  # noqa: E402

SIZES = [1024, 500_000, 3_147_060]
api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Bare:
    def __init__(self) -> None:
        self.bodies = {n: os.urandom(n) for n in SIZES}

    @api.get("/healthz")
    async def healthz(self) -> dict:  # what serve's direct_urls looks for
        return {"replica": serve.get_replica_context().replica_id.unique_id}

    @api.post("/body/{n}")
    async def body(self, n: int, fresh: int = 0) -> Response:
        t = time.perf_counter()
        body = bytes(memoryview(self.bodies[n])) if fresh else self.bodies[n]  # a new object: one copy
        return Response(body, media_type="image/png", headers={"x-make-ms": f"{(time.perf_counter() - t) * 1e3:.4f}"})


async def time_httpx(url: str, n: int) -> list[float]:
    async with httpx.AsyncClient() as c:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await c.post(url, json={"prompt": "x"})
            await r.aread()
            out.append((time.perf_counter() - t) * 1e3 - float(r.headers["x-make-ms"]))
    return out


async def time_aiohttp(url: str, n: int) -> list[float]:
    async with aiohttp.ClientSession() as s:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(url, json={"prompt": "x"}) as r:
                await r.read()
            out.append((time.perf_counter() - t) * 1e3 - float(r.headers["x-make-ms"]))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="logs/serve_client_overhead.csv")
    p.add_argument("--n", type=int, default=40, help="timed requests per client and body (after 3 warm-up ones)")
    p.add_argument("--port", type=int, default=8011)
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"port": args.port})
    serve.run(Bare.bind(), name="bare", route_prefix="/")
    from quant_utils.serving.server import direct_urls

    rows = []
    try:
        direct = next(iter(direct_urls("127.0.0.1", 1).values()))
        for path, base in (("proxy", f"http://127.0.0.1:{args.port}"), ("direct", direct)):
            for size, (body, fresh) in itertools.product(SIZES, (("kept", 0), ("fresh", 1))):
                for name, fn in (("httpx", time_httpx), ("aiohttp", time_aiohttp)):
                    ms = asyncio.run(fn(f"{base}/body/{size}?fresh={fresh}", args.n + 3))[3:]
                    rows.append({"path": path, "client": name, "body": body, "body_bytes": size, "n": len(ms),
                                 "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))})
                    print(f"{path:6} {name:8} {body:5} {size:>9} B  p50 {rows[-1]['p50_ms']:7.2f} ms  "
                          f"p95 {rows[-1]['p95_ms']:7.2f} ms")
    finally:
        serve.shutdown()
        ray.shutdown()
    write_csv(pd.DataFrame(rows), args.out, provenance(script="scripts/device/bare_serve_overhead.py",
                                                       weights="none (a bare deployment, no model)", backend="none",
                                                       cpus=os.cpu_count(), ray=ray.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
