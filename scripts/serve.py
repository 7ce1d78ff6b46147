r"""Serve the (quantized) pipeline over HTTP with Ray Serve (README "Serve"; quant_utils/serving/server.py).

The embedded tiny model on the CPU, on http://127.0.0.1:8000 (Ctrl-C stops it):
    python scripts/serve.py
    curl -s -X POST localhost:8000/generate -d '{"prompt": "a corgi", "seed": 1}' -o corgi.png -D -
    curl -s -X POST localhost:8000/generate -d '{"prompt": "a corgi", "format": "jpeg"}' -o corgi.jpg   # smaller
The real model on every GPU, FP16 and W8A8 (checkpoint from quant_txt2img), batches of 4, SLO policy with admission:
    python scripts/serve.py --config configs/stable-diffusion/sdxl_turbo.yaml --fp16 --modes fp16 w8a8 \
        --ckpt_base logs/sdxl_mixdq --backend kernel --replicas 2 --max_batch 4 --policy slo --res 1024 \
        --ladder 1024 768 512 --slo_ms 1000 --admission
Drive it with: python scripts/load_test_stub.py --target http://127.0.0.1:8000 --patterns poisson --load 0.5 0.8
With --direct_ingress every replica also answers on its own port (printed at start, e.g. http://127.0.0.1:30000),
without the proxy's hop: a load balancer of your own, or --target that address for one replica's shortest path.

Every replica holds the pipeline and one quantized UNet copy per quantized mode (<ckpt_base>/<mode>/ckpt.pth), warms
every (resolution, mode, batch) bucket, and calibrates a performance model when --perf_model is of another device.
Metrics (Prometheus text): http://127.0.0.1:<metrics_port>/metrics, names ray_serve_* and ray_mixdq_*.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even when started as a shell background job
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils.cli import add_model_args, user_errors  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.qlayers import BACKENDS  # noqa: E402
from quant_utils.serving.policies import POLICIES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, resolution=False, exec_mode=dict(default=None, help=(
        "Runner execution (default: auto = compiled blocks + compiled decoder + CUDA graphs on CUDA, eager on CPU)")),
        seed=dict(default=None, help="unused: each request carries its seed (default 0)"))
    m = p.add_argument_group("modes")
    m.add_argument("--modes", nargs="+", default=["fp16"], help="modes a request may ask for (first = default): "
                   "fp16 (the loaded pipeline) and w8a8/w6a8/w4a8 (MixDQ checkpoints)")
    m.add_argument("--ckpt_base", default="logs/sdxl_mixdq", help="mode M loads <ckpt_base>/M/ckpt.pth (quant_txt2img "
                   "--base_path <ckpt_base>/M writes it)")
    m.add_argument("--backend", default="fake", choices=BACKENDS, help="quantized modes' backend")
    m.add_argument("--cpu_threads", type=int, default=1, help="on CPU: torch threads per replica")
    s = p.add_argument_group("policy (the load test's simulator uses the same classes)")
    s.add_argument("--policy", default="static", choices=POLICIES, help="how each request's resolution/mode is chosen")
    s.add_argument("--res", type=int, default=None, help="static resolution, the most a request gets (default: config's)")
    s.add_argument("--ladder", nargs="+", type=int, default=None, help="resolutions served, best first (default: --res)")
    s.add_argument("--adaptive_modes", nargs="*", default=[], help="lower bit-width modes adaptive/slo may switch to")
    s.add_argument("--q_high", type=int, default=4, help="adaptive: step k down at q_high*(k+1) waiting requests")
    s.add_argument("--q_low", type=int, default=1, help="adaptive: step back up at q_low + q_high*k")
    s.add_argument("--slo_ms", type=float, default=1000.0, help="latency SLO, ms (slo policy, admission)")
    s.add_argument("--admission", action="store_true", help="reject (HTTP 429) requests predicted to miss the SLO")
    s.add_argument("--perf_model", default="results/perf_model.json",
                   help="latency model of this device; another device's is replaced by one calibrated on each replica")
    s.add_argument("--calibrate", action="store_true", help="calibrate on each replica even if --perf_model fits")
    s.add_argument("--calibrate_repeats", type=int, default=5, help="timed calls per (res, mode, batch) when calibrating")
    v = p.add_argument_group("serving")
    v.add_argument("--replicas", type=int, default=1, help="replicas (one GPU each on CUDA)")
    v.add_argument("--max_batch", type=int, default=1, help="@serve.batch max_batch_size per resolution bucket")
    v.add_argument("--batch_wait_s", type=float, default=0.0,
                   help="@serve.batch batch_wait_timeout_s: how long a released batch waits for same-bucket arrivals")
    v.add_argument("--router", default="pow2", choices=["pow2", "rr"],
                   help="Ray Serve routing: power of two choices (Ray's default) or round robin")
    v.add_argument("--max_ongoing", type=int, default=1000, help="requests a replica accepts at once (the rest wait "
                   "in Ray's router, unseen by the policy)")
    v.add_argument("--max_body_bytes", type=int, default=16384, help="larger request bodies get HTTP 413")
    v.add_argument("--png_level", type=int, default=0, help="PNG zlib level (0: no compression, fastest)")
    v.add_argument("--jpeg_quality", type=int, default=90, help="JPEG quality (1-100) of requests with format jpeg")
    v.add_argument("--keep_freed_heap", action="store_true", help="glibc keeps freed multi-MB blocks in the replica's "
                   "heap (mallopt), so each response's encode reuses pages instead of faulting in fresh ones "
                   "(x-encode-faults counts them); off: no encode faulted on the GPU machine")
    v.add_argument("--encode_on", default="auto", choices=["auto", "device", "cpu"],
                   help="where the encoders' pixel work runs: device = where the images are made, JPEG whole "
                   "(torchvision: nvJPEG on a GPU, one call per batch; x-encoded-on: device), PNG level 0 laid out there "
                   "but its CRC, computed on an encoder thread (x-encoded-on: device+cpu); cpu = all of it on the "
                   "replica's encoder threads; auto = device on a GPU replica (H200, 1024 px: the overhead per request "
                   "7.1-7.5 ms p50 instead of 12.1-12.4), else cpu")
    v.add_argument("--health_check_period_s", type=float, default=10.0, help="Ray Serve replica health-check period")
    v.add_argument("--log_level", default="WARNING", help="replica log level (DEBUG also logs every request)")
    r = p.add_argument_group("Ray")
    r.add_argument("--address", default=None, help="join this running Ray cluster (e.g. auto or HOST:6379) instead of "
                   "starting one; every node needs this repo at the same path")
    r.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on every interface)")
    r.add_argument("--port", type=int, default=8000, help="HTTP port")
    r.add_argument("--metrics_port", type=int, default=8080, help="Prometheus metrics port (local Ray only)")
    r.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    r.add_argument("--object_store_mb", type=int, default=512, help="object store of the local Ray instance, MiB")
    r.add_argument("--direct_ingress", action="store_true",
                   help="also serve every replica on its own port, without the proxy's hop (Ray Serve's experimental "
                        "direct ingress; ports from 30000, RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT); local Ray only")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. the configuration, checked before Ray starts
    from quant_utils.serving import server

    cfg = server.ServeConfig.from_args(args).resolve()
    # 2. Ray, the application, and every replica warm. Ctrl-C / SIGTERM stop it, while starting too (a shell's
    #    background job inherits SIGINT ignored: install the handler explicitly)
    stop, ready = threading.Event(), threading.Event()

    def on_signal(*_):
        if not ready.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"starting {cfg.replicas} replica(s) of {cfg.config}, modes {cfg.served_modes}, res {cfg.ladder}, policy "
          f"{cfg.policy}{'+admission' if cfg.admission else ''}, max batch {cfg.max_batch} (loading and warming up)")
    try:
        where = server.start(cfg, address=args.address, host=args.host, port=args.port, metrics_port=args.metrics_port,
                             num_cpus=args.num_cpus, object_store_mb=args.object_store_mb,
                             direct_ingress=args.direct_ingress)
    except RuntimeError as e:  # a replica failed to start: Ray's message says why
        server.stop(joined=bool(args.address))
        raise ConfigError(f"the service did not start: {str(e).strip().splitlines()[-1]}") from None
    except KeyboardInterrupt:
        server.stop(joined=bool(args.address))
        print("stopped before it was ready")
        return
    # 3. serve until Ctrl-C / SIGTERM (Ray's driver set its own SIGTERM handler: ours again)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    ready.set()
    print(f"serving on {where['device']} at {where['url']}: POST /generate, GET /healthz, GET /config")
    for rid, url in where["direct"].items():
        print(f"replica {rid} directly (no proxy): {url}")
    if where["metrics"]:
        print(f"metrics: {where['metrics']} (ray_serve_*, ray_mixdq_*)")
    print(f"ray address: {where['ray_address']}\nready; Ctrl-C stops", flush=True)
    while not stop.wait(0.5):
        pass
    # 4. graceful shutdown: replicas finish what they hold, then Serve and (local) Ray stop
    print("stopping ...", flush=True)
    server.stop(joined=where["joined"])
    print("stopped", flush=True)


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
