"""The quantized pipeline behind HTTP on Ray Serve (scripts/serve.py; README "Serve").

One deployment, `ImageService`. Each replica (one GPU on CUDA) loads the pipeline, one MixDQ-quantized UNet copy
per quantized mode it serves (checkpoints made by quant_txt2img) and a generation Runner per model, and warms every
(resolution, mode, batch) bucket before it reports ready. HTTP: `POST /generate` {prompt, seed?, res?, mode?, steps?,
format?} -> image/png (or image/jpeg) with headers saying what was served and where the replica's time went;
`GET /healthz`; `GET /config` (what a load test needs to configure the simulator like this service, performance
model included). Metrics: Ray Serve's Prometheus metrics plus the `mixdq_*` ones defined here, on Ray's metrics port.

Per request, on arrival at its replica, the simulator's policy classes (static, adaptive, slo, +admission) pick the
resolution and mode from this replica's queue, or reject it (HTTP 429). Requests wait in the replica's bucket
queue; whenever the GPU is free, the bucket whose oldest request has waited longest is released, up to max_batch
requests, into that bucket's `@serve.batch` handler, which runs them as one batch. Batches thus form at service
start, as in the simulator (a bare `@serve.batch` queue forms them on arrival, which under load leaves them at
size 1). With batch_wait_s > 0 a released batch stays open that long for arrivals of the same bucket.
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram
from ray.serve.request_router import FIFOMixin, RequestRouter

from .. import REPO_ROOT, repo_path
from ..errors import ConfigError
from ..modes import FP16, uniform_mode_bits
from .images import (IMAGE_FORMATS, EncodeTiming, PngOnHost, encode_image_timed, encode_jpeg_on_device,
                     encode_png_on_device, keep_freed_heap, timed)
from .policies import POLICIES, Option, build_policy
from .simulator import ServiceTable

APP_NAME = "mixdq"
ROUTERS = {"pow2": "jsq", "rr": "rr"}  # Ray Serve router -> the simulator's nearest dispatch rule
REQUEST_FIELDS = ("prompt", "seed", "res", "mode", "steps", "format")
MAX_PROMPT_CHARS = 2000
MS_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]


@dataclass
class ServeConfig:
    """Everything a replica needs (sent to every replica; defaults = `python scripts/serve.py`)."""
    # model
    config: str = "configs/stable-diffusion/sdxl_turbo_tiny.yaml"
    random_weights: bool = False
    device: str = "auto"
    fp16: bool = False
    exec_mode: str | None = None           # None: auto = compiled blocks + CUDA graphs on CUDA, eager on CPU
    vae_exec: str = "static"
    steps: int | None = None               # default: the model config's
    guidance_scale: float | None = None
    modes: list[str] = field(default_factory=lambda: ["fp16"])
    ckpt_base: str = "logs/sdxl_mixdq"     # quantized mode m loads <ckpt_base>/<m>/ckpt.pth
    backend: str = "fake"
    cpu_threads: int = 1
    # policy (the simulator's flags)
    policy: str = "static"
    res: int | None = None                 # default: the model config's height
    ladder: list[int] | None = None        # default: [res]
    adaptive_modes: list[str] = field(default_factory=list)
    q_high: int = 4
    q_low: int = 1
    slo_ms: float = 1000.0
    admission: bool = False
    perf_model: str = "results/perf_model.json"
    calibrate: bool = False
    calibrate_repeats: int = 5
    prompt: str = "a corgi in sunglasses"  # warm-up and calibration prompt
    # serving
    replicas: int = 1
    max_batch: int = 1
    batch_wait_s: float = 0.0
    router: str = "pow2"
    max_ongoing: int = 1000
    max_body_bytes: int = 16384
    png_level: int = 0
    jpeg_quality: int = 90
    keep_freed_heap: bool = False
    encode_on: str = "auto"  # device: JPEG encoded where the images are (nvJPEG on a GPU), PNG made there; auto:
    # device on a GPU replica, else cpu
    health_check_period_s: float = 10.0
    log_level: str = "WARNING"
    extra: dict = field(default_factory=dict)  # the other flags (e.g. the model group's newer ones) for make_runner

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeConfig":
        names = cls.__dataclass_fields__
        known = {k: v for k, v in vars(args).items() if k in names and v is not None}
        return cls(**known, extra={k: v for k, v in vars(args).items() if k not in names})

    @property
    def served_modes(self) -> list[str]:
        return list(dict.fromkeys(self.modes + self.adaptive_modes))

    def ckpt_path(self, mode: str):
        return repo_path(self.ckpt_base) / mode / "ckpt.pth"

    def resolve(self) -> "ServeConfig":
        """Fill defaults from the model config and check everything that can be checked before Ray starts."""
        from ..pipeline import check_resolution, check_steps, load_model_config

        mcfg = load_model_config(self.config)
        self.res = self.res or mcfg.height
        self.ladder = list(self.ladder or [self.res])
        for m in self.served_modes:
            wbits, _ = uniform_mode_bits(m)  # the service runs the uniform modes
            if m != FP16 and not self.ckpt_path(m).is_file():
                raise ConfigError(f"mode {m} needs its checkpoint {self.ckpt_path(m)}; make it with: python "
                                  f"scripts/quant_txt2img.py --config {self.config} --wbits {wbits} "
                                  f"--num_imgs 1 --base_path {self.ckpt_base}/{m} (plus your model flags)")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r}: expected one of {list(POLICIES)}")
        if self.res not in self.ladder:
            raise ConfigError(f"res {self.res} must be one of the ladder {self.ladder} (the ladder starts there)")
        self.ladder = self.ladder[self.ladder.index(self.res):]
        for r in self.ladder:
            check_resolution(r, r)
        if self.steps is not None:
            check_steps(self.steps)
        if self.replicas < 1 or self.max_batch < 1 or self.batch_wait_s < 0 or self.max_body_bytes < 64:
            raise ConfigError(f"need replicas >= 1, max_batch >= 1, batch_wait_s >= 0 and max_body_bytes >= 64 "
                              f"(got {self.replicas}, {self.max_batch}, {self.batch_wait_s}, {self.max_body_bytes})")
        if self.router not in ROUTERS:
            raise ConfigError(f"router {self.router!r}: expected one of {list(ROUTERS)}")
        if not 0 <= self.png_level <= 9:
            raise ConfigError(f"png_level {self.png_level}: expected 0 (no compression, fastest) to 9")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality {self.jpeg_quality}: expected 1 to 100 (Pillow's scale)")
        if self.encode_on not in ("auto", "device", "cpu"):
            raise ConfigError(f"encode_on {self.encode_on!r}: expected auto, device or cpu")
        build_policy(self.policy, self.modes[0], self.res, self.ladder, bits_ladder=self.adaptive_modes,
                     q_high=self.q_high, q_low=self.q_low, slo_ms=self.slo_ms, admission=self.admission)
        return self


# --------------------------------------------------------------------------- model side (torch imported lazily)
def make_runner(pipe, cfg: ServeConfig):
    """The one place the service builds a generation Runner (through the scripts' shared `runner_from_args`, so every
    model flag applies): the fastest path on CUDA by default (compiled blocks, compiled decoder, CUDA graphs), eager
    on a CPU."""
    from ..cli import runner_from_args

    args = argparse.Namespace(**{**cfg.extra, **asdict(cfg)})
    args.exec_mode = cfg.exec_mode or "auto"
    return runner_from_args(pipe, args)


def load_models(cfg: ServeConfig) -> tuple[dict[str, Any], dict[str, str], Any]:
    """(Runner per served mode, what each mode really runs, the model config). `fp16` is the loaded pipeline in its
    own dtype (the tiny model's float32 on a CPU: the label says so); w<b>a8 a quantized copy of its UNet."""
    from ..cli import PROMPTS_32, pipeline_from_args
    from ..generation import read_prompts
    from ..mixdq import quantized_copy
    from ..quantize import quant_layers

    ns = argparse.Namespace(config=cfg.config, device=cfg.device, fp16=cfg.fp16, random_weights=cfg.random_weights)
    mcfg, pipe, _ = pipeline_from_args(ns)
    steps = cfg.steps or mcfg.steps
    calib = read_prompts(repo_path(PROMPTS_32))[:8]  # only used if a checkpoint vanished
    runners, labels = {}, {}
    for mode in cfg.served_modes:
        if mode == FP16:
            model, labels[mode] = pipe, "fp16" if cfg.fp16 or mcfg.dtype == "float16" else mcfg.dtype
        else:
            model, _ = quantized_copy(pipe, mode, mcfg.name, cfg.ckpt_path(mode), calib, 0, cfg.res, cfg.res, steps,
                                      backend=cfg.backend)
            ran = sorted({layer.backend for _, layer in quant_layers(model.unet)})  # kernel falls back to fake on CPU
            labels[mode] = f"{mode}-{'/'.join(ran)}"
        runners[mode] = make_runner(model, cfg)
    return runners, labels, mcfg


def replica_perf_model(cfg: ServeConfig, generate: dict, options: list[Option], steps: int):
    """The performance model the policies and the load test's simulator use: --perf_model when it is of this device
    and has every served mode (then every bucket is warmed), else one calibrated here (which warms them too)."""
    from ..csvio import device_name
    from ..perf_model import PerfModel
    from . import live

    here = device_name()
    path = repo_path(cfg.perf_model)
    if path.is_file() and not cfg.calibrate:
        pm = PerfModel.load(path)
        if pm.gpu == here and all(m in pm.groups for m in cfg.served_modes):
            live.warm_up(generate, options, cfg.max_batch, cfg.prompt)
            return pm, cfg.perf_model
    table = live.calibrate(generate, options, cfg.max_batch, cfg.calibrate_repeats, steps, here, cfg.prompt)
    pm = PerfModel.fit(table, gpu=here, weights="live", note="calibrated on a serve.py replica at start-up")
    return pm, "calibrated on the replica"


# --------------------------------------------------------------------------- requests
class RequestError(ValueError):
    """A bad request: HTTP `status` with a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass
class GenerateRequest:
    prompt: str
    seed: int = 0
    res: int = 0          # 0: the policy decides; else the most the request may get (a ladder resolution)
    mode: str = ""
    steps: int = 0        # 0: the service's default
    format: str = "png"   # the response body's (IMAGE_FORMATS)


def parse_generate(body: bytes, modes: list[str], ladder: list[int]) -> GenerateRequest:
    """Validate a /generate body; raises RequestError(400) with the reason."""
    try:
        d = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise RequestError(400, f"body must be a JSON object with fields {list(REQUEST_FIELDS)}")
    unknown = sorted(set(d) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; expected {list(REQUEST_FIELDS)}")
    prompt = d.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(400, "prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(400, f"prompt has {len(prompt)} characters, at most {MAX_PROMPT_CHARS} are accepted")

    def integer(name: str, lo: int, hi: int) -> int:
        v = d.get(name)
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise RequestError(400, f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    req = GenerateRequest(prompt=prompt, seed=integer("seed", 0, 2**63 - 1), res=integer("res", 1, 1 << 16),
                          steps=integer("steps", 1, 4), mode=d.get("mode") or modes[0],
                          format="png" if d.get("format") is None else d["format"])
    if not isinstance(req.format, str) or req.format not in IMAGE_FORMATS:
        raise RequestError(400, f"unknown format {req.format!r}: expected one of {list(IMAGE_FORMATS)}")
    if req.mode not in modes:
        raise RequestError(400, f"unknown mode {req.mode!r}: this service serves {modes}")
    if req.res and req.res not in ladder:
        raise RequestError(400, f"res {req.res} is not served: the resolution ladder is {ladder}")
    return req


@dataclass(eq=False)
class _Job:
    rid: int
    req: GenerateRequest
    opt: Option
    steps: int
    arrival: float
    released: asyncio.Event
    start: float = math.nan
    service_ms: float = math.nan
    ahead: bool = False  # its batch went to the device's thread while the one before ran
    batch_size: int = 0


class ReplicaQueue:
    """Waiting requests of one replica, one FIFO per bucket (option index, steps), with their predicted service time
    in full batches (the policies' backlog, as the simulator's BucketQueue computes it)."""

    def __init__(self, table: ServiceTable):
        self.table = table
        self.buckets: dict[tuple[int, int], deque] = {}
        self.n = 0
        self.backlog_ms = 0.0

    def _cost(self, key, count: int) -> float:
        return self.table.batched_ms(key[0], count)

    def push(self, key: tuple[int, int], job: _Job) -> None:
        q = self.buckets.setdefault(key, deque())
        q.append(job)
        self.n += 1
        self.backlog_ms += self._cost(key, len(q)) - self._cost(key, len(q) - 1)

    def take(self, key: tuple[int, int], count: int) -> list[_Job]:
        q = self.buckets.get(key) or deque()
        c = len(q)
        jobs = [q.popleft() for _ in range(min(count, c))]
        self.n -= len(jobs)
        self.backlog_ms = self.backlog_ms - self._cost(key, c) + self._cost(key, c - len(jobs)) if self.n else 0.0
        return jobs

    def remove(self, key: tuple[int, int], job: _Job) -> None:
        q = self.buckets.get(key)
        if q and job in q:
            c = len(q)
            q.remove(job)
            self.n -= 1
            self.backlog_ms = self.backlog_ms - self._cost(key, c) + self._cost(key, c - 1) if self.n else 0.0

    def waiting(self, key: tuple[int, int]) -> int:
        return len(self.buckets.get(key) or ())

    def oldest(self) -> tuple[int, int] | None:
        """The bucket whose head request arrived first (request ids grow with arrival)."""
        heads = [(q[0].rid, k) for k, q in self.buckets.items() if q]
        return min(heads)[1] if heads else None


class RoundRobinRouter(FIFOMixin, RequestRouter):
    """Ray Serve request router: replicas in turn (the simulator's `rr` dispatch); Ray's default is pow2."""

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        self._turn = getattr(self, "_turn", -1) + 1
        return [[ordered[self._turn % len(ordered)]]]


# --------------------------------------------------------------------------- the deployment
api = FastAPI(title="MixDQ SDXL-Turbo", docs_url=None, redoc_url=None)


@serve.deployment(name="ImageService")
@serve.ingress(api)
class ImageService:
    def __init__(self, cfg: ServeConfig):
        import torch

        self.cfg = cfg
        if cfg.device == "cpu":  # oversubscribed OpenMP threads make CPU latency erratic
            torch.set_num_threads(cfg.cpu_threads)
        self.runners, self.labels, mcfg = load_models(cfg)
        from ..pipeline import weights_kind

        self.weights = weights_kind(mcfg, cfg.random_weights)  # real | random-full | random-tiny, for provenance
        self.steps = cfg.steps or mcfg.steps
        self.guidance = mcfg.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale
        generate = {m: (lambda r: lambda p, s, h, w: r(p, s, h, w, self.steps, self.guidance))(r)
                    for m, r in self.runners.items()}
        options = [Option(r, m) for r in cfg.ladder for m in cfg.served_modes]
        self.perf, self.perf_source = replica_perf_model(cfg, generate, options, self.steps)
        self.exec = next(iter(self.runners.values())).exec_mode
        # the model's cells of this exec mode when it has them (a calibrated model has only its own, 'live')
        self.perf_exec = self.exec if all(self.exec in self.perf.groups[m] for m in cfg.served_modes) else None
        self.table = ServiceTable(self.perf, cfg.max_batch, self.perf_exec, self.steps)
        self.policies = {m: build_policy(cfg.policy, m, cfg.res, cfg.ladder, bits_ladder=cfg.adaptive_modes,
                                         q_high=cfg.q_high, q_low=cfg.q_low, slo_ms=cfg.slo_ms, admission=cfg.admission)
                         for m in cfg.modes}
        for p in self.policies.values():
            p.reset()
            p.bind({o: self.table.cost_ms(o) for o in p.options()})
        self.queue = ReplicaQueue(self.table)
        self.in_flight: set[_Job] = set()
        self.forming: tuple[tuple[int, int], int] | None = None   # a released batch still collecting
        self.running_end = 0.0                                     # predicted end of the running batch (s)
        # a full batch handed to the device's thread while the one before runs (it starts the moment that one ends,
        # without the event loop's hand-offs in between): its jobs, and its predicted time (ms) until it starts
        self.ahead: list[_Job] = []
        self.ahead_ms = 0.0
        self.batchers: dict = {}
        self.gpu = ThreadPoolExecutor(1, thread_name_prefix="gpu")  # one batch at a time on the device
        self.io = ThreadPoolExecutor(2, thread_name_prefix="encode")
        self.encode_on_device = cfg.encode_on == "device" or (cfg.encode_on == "auto" and cfg.device != "cpu")
        if cfg.encode_on == "device" and cfg.device == "cpu":  # allowed (the tests run it), but nothing is gained
            warnings.warn("--encode_on device on a CPU replica: the encoders' pixel work runs in the generation "
                          "thread instead of the encoder threads (slower; meant for GPU replicas)", stacklevel=1)
        self.jpeg_on_device = self.encode_on_device and self._device_jpeg_works()
        if cfg.keep_freed_heap and not keep_freed_heap():
            warnings.warn("--keep_freed_heap: this C library has no mallopt (not glibc); memory settings unchanged",
                          stacklevel=1)
        self.rids = itertools.count()
        self.served = 0
        self.t0 = time.perf_counter()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.m_requests = Counter("mixdq_requests", description="Requests by outcome (ok, rejected, bad_request, "
                                  "error) and requested mode.", tag_keys=("mode", "outcome"))
        self.m_queue = Gauge("mixdq_queue_length", description="Requests waiting in this replica (not in service).")
        self.m_latency = Histogram("mixdq_latency_ms", description="Arrival at the replica to response built, ms.",
                                   boundaries=MS_BUCKETS, tag_keys=("mode", "res"))
        self.m_wait = Histogram("mixdq_queue_ms", description="Arrival at the replica to batch start, ms.",
                                boundaries=MS_BUCKETS, tag_keys=("mode", "res"))
        self.m_service = Histogram("mixdq_service_ms", description="Batch generation time (GPU), ms.",
                                   boundaries=MS_BUCKETS, tag_keys=("mode", "res"))
        self.m_batch = Histogram("mixdq_batch_size", description="Requests per generated batch.",
                                 boundaries=[1.5, 2.5, 4.5, 8.5, 16.5, 32.5], tag_keys=("mode", "res"))
        self.m_queue.set(0)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _device_jpeg_works(self) -> bool:
        """Encoding on the device: one small encode on the replica's device at start-up; where torchvision cannot encode
        there (no nvJPEG, an old torchvision), JPEG stays on the CPU encoder threads, with a warning."""
        import torch

        device = next(iter(self.runners.values())).device
        try:
            encode_jpeg_on_device(torch.zeros(1, 3, 16, 16, dtype=torch.uint8, device=device), self.cfg.jpeg_quality)
            return True
        except Exception as e:  # noqa: BLE001 - any failure means: not here
            warnings.warn(f"--encode_on device: torchvision cannot encode JPEG on {device} ({type(e).__name__}: {e}); "
                          "JPEG stays on the CPU", stacklevel=1)
            return False

    # ---------------------------------------------------------------- HTTP
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "replica": self.replica_id, "modes": self.cfg.modes, "queue_len": self.queue.n,
                "in_flight": len(self.in_flight), "served": self.served}

    @api.get("/config")
    async def config(self) -> Response:
        """What this service is, for clients and the load test's simulator (NaN kept, as PerfModel.save writes)."""
        return Response(json.dumps({"serve": asdict(self.cfg), "replica": self.replica_id, "labels": self.labels,
                "vae": {m: f"{r.vae_kind} ({r.vae_exec})" for m, r in self.runners.items()}, "exec": self.exec, "perf_exec": self.perf_exec,
                "steps": self.steps,
                "guidance_scale": self.guidance, "dispatch": ROUTERS[self.cfg.router], "perf_source": self.perf_source,
                "perf_model": self.perf.to_dict(), "device": str(next(iter(self.runners.values())).device),
                "weights": self.weights}),
                        media_type="application/json")

    @api.post("/generate")
    async def generate(self, request: Request) -> Response:
        arrival = self._now()
        mode = "?"
        try:
            req = parse_generate(await self._body(request), self.cfg.modes, self.cfg.ladder)
        except RequestError as e:
            self.m_requests.inc(tags={"mode": mode, "outcome": "bad_request"})
            return JSONResponse({"error": str(e)}, status_code=e.status)
        mode = req.mode
        policy = self.policies[mode]
        backlog, qlen = self._load(arrival)
        opt = policy.decide(arrival, qlen, backlog, req.res)
        if opt is None:
            self.m_requests.inc(tags={"mode": mode, "outcome": "rejected"})
            cheapest = min(policy.costs.values())
            return JSONResponse({"error": f"rejected by admission control: predicted wait {backlog:.0f} ms + "
                                          f"service {cheapest:.0f} ms exceeds the SLO of {self.cfg.slo_ms:g} ms"},
                                status_code=429, headers={"x-queue-len": str(qlen), "x-replica": self.replica_id})
        job = _Job(next(self.rids), req, opt, req.steps or self.steps, arrival, asyncio.Event())
        key = (self.table.add(opt), job.steps)
        self.queue.push(key, job)
        self.m_queue.set(self.queue.n)
        self._feed()
        try:
            await job.released.wait()
            image = await self._batcher(key)(job)
        except Exception as e:  # a failed generation is the server's fault: 500 with the reason
            self.m_requests.inc(tags={"mode": mode, "outcome": "error"})
            return JSONResponse({"error": f"generation failed: {type(e).__name__}: {e}"}, status_code=500)
        finally:  # also on cancellation (client gone): never leave the queue waiting for this job
            if not job.released.is_set():
                self.queue.remove(key, job)
                self.m_queue.set(self.queue.n)
            self.in_flight.discard(job)
            self._feed()
        # off the event loop and off the GPU thread (the next batch runs meanwhile); its wall time, waiting for a
        # free encoder thread and the hand-backs included, is x-encode-ms; the encode alone, x-encode-work-ms (and the
        # page faults it took, x-encode-faults)
        t_encode = self._now()
        if isinstance(image, EncodeTiming):  # encoded on the device right after its batch (--encode_on device), in
            enc, encoded_on = image, "device"  # the GPU thread: that time is this request's encode
            encode_ms = enc.ms
        else:  # on an encoder thread: the whole encode, or the copy of a PNG made on the device into the body
            on_host = isinstance(image, PngOnHost)
            call = ((timed, image.body) if on_host else
                    (encode_image_timed, image, req.format, self.cfg.png_level, self.cfg.jpeg_quality))
            enc = await asyncio.get_running_loop().run_in_executor(self.io, *call)
            encoded_on, encode_ms = "device+cpu" if on_host else "cpu", (self._now() - t_encode) * 1e3
        done = self._now()
        tags = {"mode": opt.mode, "res": str(opt.res)}
        self.m_latency.observe((done - arrival) * 1e3, tags=tags)
        self.m_wait.observe((job.start - arrival) * 1e3, tags=tags)
        self.m_requests.inc(tags={"mode": mode, "outcome": "ok"})
        self.served += 1
        # x-replica-ms - x-queue-ms - x-service-ms - x-encode-ms: the replica's hand-offs (to and from the GPU
        # thread, the batch's results back to each request); the client's latency - x-replica-ms: proxy, routing,
        # network (the body's trip included)
        return Response(enc.body, media_type=IMAGE_FORMATS[req.format].media_type, headers={
            "x-res": str(opt.res), "x-mode": opt.mode, "x-model": self.labels[opt.mode],
            "x-vae": self.runners[opt.mode].vae_kind, "x-steps": str(job.steps), "x-seed": str(req.seed),
            "x-queue-ms": f"{(job.start - arrival) * 1e3:.3f}", "x-service-ms": f"{job.service_ms:.3f}",
            "x-encode-ms": f"{encode_ms:.3f}", "x-encode-work-ms": f"{enc.ms:.3f}",
            "x-encode-faults": f"{enc.faults:g}", "x-encoded-on": encoded_on,
            "x-replica-ms": f"{(done - arrival) * 1e3:.3f}", "x-batch-start-ms": f"{job.start * 1e3:.3f}",
            "x-batch-ahead": str(int(job.ahead)),
            "x-format": req.format, "x-batch-size": str(job.batch_size), "x-queue-len": str(qlen),
            "x-replica": self.replica_id})

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        return body

    # ---------------------------------------------------------------- batching
    def _load(self, now: float) -> tuple[float, int]:
        """What the policy sees (as the simulator's): the predicted ms until a new request could start (the running
        batch's rest, a batch ahead, the queue in full batches) and the requests waiting, a batch ahead included."""
        running = max(self.running_end - now, 0.0) * 1e3 if self.in_flight else 0.0
        return running + self.ahead_ms + self.queue.backlog_ms, self.queue.n + len(self.ahead)

    def _release(self, jobs: list[_Job]) -> None:
        for j in jobs:
            self.in_flight.add(j)
            j.released.set()
        self.m_queue.set(self.queue.n)

    def _feed(self) -> None:
        """Release the next batch when the device is free (the oldest bucket, up to max_batch); while a released
        batch is still collecting (batch_wait_s > 0), let same-bucket arrivals join it. While the device is busy,
        release one full batch ahead (the oldest bucket holding max_batch requests): the same batch the device would
        take when free, handed to its thread early so that it starts right after the running one."""
        B = self.cfg.max_batch
        if self.forming is not None and not self.in_flight:
            self.forming = None  # its requests all went away before the batch started
        if self.forming is not None:
            key, count = self.forming
            if self.cfg.batch_wait_s > 0 and count < B:
                jobs = self.queue.take(key, B - count)
                self._release(jobs)
                self.forming = (key, count + len(jobs))
            return
        if not self.queue.n:
            return
        key = self.queue.oldest()
        if self.in_flight and (self.ahead or self.queue.waiting(key) < B):
            return
        jobs = self.queue.take(key, B)
        if self.in_flight:
            self.ahead, self.ahead_ms = jobs, self.table.p50[key[0]][B]
            for j in jobs:
                j.ahead = True
        self._release(jobs)
        self.forming = (key, len(jobs))

    def _batcher(self, key: tuple[int, int]):
        """The bucket's @serve.batch handler (made on first use: Ray's batch queue needs the running loop)."""
        fn = self.batchers.get(key)
        if fn is None:
            async def run(jobs: list[_Job]) -> list[np.ndarray | PngOnHost | EncodeTiming]:
                return await self._run_batch(key, jobs)

            opt = self.table.options[key[0]]
            run.__name__ = f"generate_{opt.res}_{opt.mode}_{key[1]}step"  # tags Ray's serve_batch_* metrics
            # two at once: the running batch and one released ahead (_feed); the device's thread runs them in turn
            fn = self.batchers[key] = serve.batch(max_batch_size=self.cfg.max_batch, max_concurrent_batches=2,
                                                  batch_wait_timeout_s=self.cfg.batch_wait_s)(run)
        return fn

    async def _run_batch(self, key: tuple[int, int], jobs: list[_Job]) -> list[np.ndarray | PngOnHost | EncodeTiming]:
        if self.forming is not None and self.forming[0] == key:
            self.forming = None
        k, steps = key
        opt = self.table.options[k]
        if not any(j in self.ahead for j in jobs):  # else the batch before sets it when it ends
            self.running_end = self._now() + self.table.p50[k][min(len(jobs), self.cfg.max_batch)] / 1e3
        runner = self.runners[opt.mode]

        def work():
            from ..runtime import to_host_images

            start = self._now()  # on the device's thread: a batch released ahead starts when the one before ends
            t = time.perf_counter()
            images = runner([j.req.prompt for j in jobs], [j.req.seed for j in jobs], opt.res, opt.res, steps,
                            self.guidance, keep_on_device=True)
            on_device = [i for i, j in enumerate(jobs) if self.jpeg_on_device and j.req.format == "jpeg"]
            png = [i for i, j in enumerate(jobs)
                   if self.encode_on_device and j.req.format == "png" and self.cfg.png_level == 0]
            on_host = [i for i in range(len(jobs)) if i not in on_device and i not in png]
            part = lambda idx: images if len(idx) == len(jobs) else images[idx]  # noqa: E731  (no copy: all of them)
            out = dict(zip(on_host, to_host_images(part(on_host)))) if on_host else {}
            if png:  # the PNG file made on the device but its CRC (an encoder thread's): one copy to the host
                out.update(zip(png, map(PngOnHost, encode_png_on_device(part(png), crc_on_device=False))))
            ms = (time.perf_counter() - t) * 1e3  # generation, the pixels' trip to the host (as calibrated), PNG file
            if on_device:  # one batched encode; each request's x-encode-ms is the batch's
                t = time.perf_counter()
                bodies = encode_jpeg_on_device(part(on_device), self.cfg.jpeg_quality)
                enc_ms = (time.perf_counter() - t) * 1e3
                out.update({i: EncodeTiming(b, enc_ms, math.nan) for i, b in zip(on_device, bodies)})
            return [out[i] for i in range(len(jobs))], ms, start

        try:
            images, ms, start = await asyncio.get_running_loop().run_in_executor(self.gpu, work)
        finally:
            for j in jobs:
                self.in_flight.discard(j)
            if self.ahead and not any(j in self.ahead for j in jobs):  # the batch ahead is running now
                self.running_end = self._now() + self.ahead_ms / 1e3
                self.ahead, self.ahead_ms = [], 0.0
            self._feed()
        tags = {"mode": opt.mode, "res": str(opt.res)}
        self.m_batch.observe(len(jobs), tags=tags)
        self.m_service.observe(ms, tags=tags)
        for j in jobs:
            j.start, j.service_ms, j.batch_size = start, ms, len(jobs)
        return list(images)


# --------------------------------------------------------------------------- starting and stopping
def build_app(cfg: ServeConfig, on_gpu: bool):
    """The Serve application: `cfg.replicas` replicas of ImageService, one GPU each on CUDA."""
    from ray.serve.config import RequestRouterConfig
    from ray.serve.schema import LoggingConfig

    cfg.device = "cuda" if on_gpu else "cpu"
    # CPU replicas reserve no Ray CPUs: the tiny model is a demo, its threads are --cpu_threads
    actor = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": 0}
    opts = dict(num_replicas=cfg.replicas, ray_actor_options=actor, max_ongoing_requests=cfg.max_ongoing,
                health_check_period_s=cfg.health_check_period_s,
                logging_config=LoggingConfig(log_level=cfg.log_level, enable_access_log=cfg.log_level == "DEBUG"))
    if cfg.router == "rr":
        opts["request_router_config"] = RequestRouterConfig(request_router_class=RoundRobinRouter)
    return ImageService.options(**opts).bind(cfg)


DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
# how long a direct-ingress replica keeps answering once told to stop: Ray's default (30 s) gives an external load
# balancer time to notice; serve.py's own Ctrl-C (and the tests) would wait that long. 2 s unless the environment says
DIRECT_DRAIN_ENV, DIRECT_DRAIN_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2"


def direct_port_range() -> range:
    """The HTTP ports Ray Serve gives ingress replicas under direct ingress (its environment variables, defaults)."""
    lo = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    return range(lo, int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(lo + 1000))))


def direct_urls(host: str, replicas: int, timeout_s: float = 30.0) -> dict[str, str]:
    """Replica id -> its own HTTP address under direct ingress: the ports of Ray's range whose /healthz answers, probed
    from the lowest (Ray hands them out lowest first) until every replica is found or `timeout_s` passes."""
    import httpx

    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < replicas and time.monotonic() < deadline:
        for p in direct_port_range()[:4 * replicas + 4]:
            url = f"http://{host}:{p}"
            try:
                rid = httpx.get(url + "/healthz", timeout=1.0).json()["replica"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            found.setdefault(rid, url)
        if len(found) < replicas:
            time.sleep(0.5)
    return found


def start(cfg: ServeConfig, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          metrics_port: int = 8080, num_cpus: int | None = None, object_store_mb: int = 512,
          direct_ingress: bool = False) -> dict:
    """Start (or join, with `address`) Ray, deploy the app and wait until every replica is warm; returns where.

    `direct_ingress` (a local Ray only): Ray Serve's experimental direct ingress, where every replica also answers
    HTTP on its own port (`direct_port_range`), so a client or a load balancer in front skips the proxy's hop (and
    the response body's trip through it); the proxy on `port` keeps serving and balancing as before."""
    import ray

    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if direct_ingress:
        if address:
            raise ConfigError(f"--direct_ingress starts it on a local Ray; on a cluster set {DIRECT_INGRESS_ENV}=1 "
                              "in the environment of every `ray start`")
        os.environ[DIRECT_INGRESS_ENV] = env[DIRECT_INGRESS_ENV] = "1"  # read by Serve's controller and replicas
        os.environ[DIRECT_DRAIN_ENV] = env[DIRECT_DRAIN_ENV] = os.environ.get(DIRECT_DRAIN_ENV, DIRECT_DRAIN_S)
    if address:  # every node needs this repository at the same path, and the same Python environment
        ray.init(address=address, runtime_env={"env_vars": env})
    else:  # the GPUs torch sees, so that a failed GPU auto-detection by Ray cannot put the model on the CPU
        import torch

        num_gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _metrics_export_port=metrics_port,
                 object_store_memory=object_store_mb * 2**20, runtime_env={"env_vars": env})
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.device.startswith("cuda") and gpus < 1:
        raise ConfigError(f"--device {cfg.device}: the Ray cluster has no GPU")
    on_gpu = cfg.device != "cpu" and gpus >= 1
    if on_gpu and gpus < cfg.replicas:
        raise ConfigError(f"{cfg.replicas} replicas need {cfg.replicas} GPUs; the Ray cluster has {gpus:g}")
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg, on_gpu), name=APP_NAME, route_prefix="/", blocking=False)
    direct = direct_urls(host if host != "0.0.0.0" else "127.0.0.1", cfg.replicas) if direct_ingress else {}
    if direct_ingress and len(direct) < cfg.replicas:
        raise RuntimeError(f"direct ingress: {len(direct)} of {cfg.replicas} replicas answer on ports "
                           f"{direct_port_range().start}+")
    return {"url": f"http://{host}:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics" if not address else None,
            "ray_address": ray.get_runtime_context().gcs_address, "device": cfg.device, "joined": bool(address),
            "direct": direct}


def stop(joined: bool = False) -> None:
    """Delete the app (a joined cluster keeps running) or shut Serve and the local Ray instance down."""
    import ray

    if ray.is_initialized():  # (stopped while Ray itself was starting: nothing to delete)
        serve.delete(APP_NAME) if joined else serve.shutdown()
    ray.shutdown()
