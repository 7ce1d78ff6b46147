r"""Load test: burst and Poisson load, static vs adaptive serving policy, simulated or live (README section 3.policy).

With no arguments, the source's sweep, simulated on the committed performance model (results/perf_model.json):
burst with concurrency 1 and 2 (closed loop: c clients sending back to back) and Poisson λ in {0.5, 1, 2, 4}
req/s, W8/W6/W4, static vs adaptive:
    python scripts/load_test_stub.py
Loads as fractions of capacity, the SLO-predictive policy with admission control, 2 replicas, batches of 4:
    python scripts/load_test_stub.py --patterns poisson --load 0.5 0.8 0.95 1.1 --policies static adaptive slo \
        --admission --replicas 2 --max_batch 4 --dispatch jsq
Live: the same arrival traces against the in-process pipeline (here the tiny model on the CPU), plus a fidelity
table of simulated vs live p50/p95 (the simulator then uses a model calibrated on this generator unless
--perf_model is of this very device):
    python scripts/load_test_stub.py --live --res 64 --ladder 64 32 --patterns poisson --load 0.5 0.8 --wbits 8 4 \
        --num_requests 12

HTTP: the same traces against the Ray Serve service (scripts/serve.py), the simulator configured like it (modes,
policy, replicas, max batch, dispatch, its performance model); add --live for the in-process comparison:
    python scripts/load_test_stub.py --target http://127.0.0.1:8000 --patterns poisson burst --load 0.5 0.8 --conc 4

Writes <base_path>/queue_tests/<run_name>/: mixdq_queue_results.csv and .txt (one row/line per run),
mixdq_queue_requests.csv (one row per request), config.json (the resolved configuration), with --live
mixdq_queue_fidelity.csv and perf_model_live.json, with --target mixdq_queue_fidelity_http.csv,
mixdq_queue_http_split.csv (where each run's client latency went) and perf_model_server.json, with both
mixdq_queue_overhead.csv (columns: docs/outputs.md). Seeds: --seed, else $MIXDQ_LOADTEST_SEED, else 0.
Plot with: python scripts/plot_mixdq_queue_results.py <...>/mixdq_queue_results.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (HelpFormatter, add_model_args, check_device_for_exec, model_config_from_args,  # noqa: E402
                             nonnegative_float, positive_int, user_errors, weights_label)
from quant_utils.csvio import atomic_write_text, provenance, write_csv  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.modes import BITS, DECODERS, FP16, mode_key, wbits_mode  # noqa: E402
from quant_utils.perf_model import PerfModel  # noqa: E402
from quant_utils.qlayers import BACKENDS  # noqa: E402
from quant_utils.serving import client, live, sweep  # noqa: E402
from quant_utils.serving.images import IMAGE_FORMATS  # noqa: E402
from quant_utils.serving.policies import POLICIES, Option, build_policy  # noqa: E402
from quant_utils.serving.simulator import DISPATCH, NOISE, REQUEST_CSV_DECIMALS, ServerConfig, ServiceTable, simulate  # noqa: E402
from quant_utils.serving.workloads import PATTERNS, read_trace, resolve_seed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("workload")
    g.add_argument("--patterns", nargs="+", default=["burst", "poisson"], choices=PATTERNS, help="arrival patterns")
    g.add_argument("--conc", nargs="+", type=positive_int, default=[1, 2], help="burst: closed-loop concurrency (clients)")
    g.add_argument("--burst_size", type=int, default=None, help="burst: open-loop bursts of this many requests ...")
    g.add_argument("--burst_every_s", type=float, default=None, help="... every this many seconds (0 = all at once)")
    g.add_argument("--rates", nargs="*", type=float, default=None, help="Poisson/gamma rates, req/s (default 0.5 1 2 4 without --load)")
    g.add_argument("--load", nargs="*", type=float, default=[], help="Poisson/gamma rates as fractions of the static config's capacity")
    g.add_argument("--burstiness", type=float, default=0.5, help="gamma: shape of inter-arrivals (1 = Poisson, <1 burstier)")
    g.add_argument("--trace", default=None, help="trace CSV (arrival_s[, prompt, res]) for --patterns trace")
    g.add_argument("--num_requests", type=positive_int, default=None,
                   help="requests per run (default 2000 simulated, 100 with --live; a trace run has the trace's)")
    g.add_argument("--retry_backoff_ms", type=float, default=100.0,
                   help="burst (closed loop): a client whose request is rejected resends it after this many ms "
                        "(a retry, counted apart from first attempts)")
    s = p.add_argument_group("policies")
    s.add_argument("--wbits", nargs="+", type=int, default=None,
                   help="weight bit-widths (16 = fp16); mode w<b>a8 (default 8 6 4; with --target the service's modes)")
    s.add_argument("--policies", nargs="+", default=["static", "adaptive"], choices=POLICIES, help="policies to compare")
    s.add_argument("--res", type=int, default=1024, help="static resolution (and the most a request gets)")
    s.add_argument("--ladder", nargs="+", type=int, default=[1024, 768, 512], help="adaptive/slo resolutions, best first")
    s.add_argument("--adaptive_wbits", nargs="*", type=int, default=[], help="lower bit-widths adaptive/slo may also use")
    s.add_argument("--adaptive_vae", nargs="*", default=[], choices=[d for d in DECODERS if d != FP16],
                   help="faster decoders adaptive/slo may also switch to, at the lowest resolution (modes <mode>+<decoder>: "
                        "the performance model needs them, e.g. fitted from bench_e2e's CSV)")
    s.add_argument("--q_high", type=int, default=4, help="adaptive: step k down at q_high*(k+1) waiting requests")
    s.add_argument("--q_low", type=int, default=1, help="adaptive: step back up at q_low + q_high*k (hysteresis)")
    s.add_argument("--slo_ms", type=float, default=1000.0, help="latency SLO, ms (metrics, slo policy, admission)")
    s.add_argument("--admission", action="store_true", help="reject requests that even the cheapest option cannot serve in time")
    s.add_argument("--quality_csv", default=None, help="quality table (e.g. eval_grid's CSV) ordering the slo policy's options")
    s.add_argument("--quality_col", default="clip_score", help="column of --quality_csv to rank by (higher = better)")
    v = p.add_argument_group("server")
    v.add_argument("--perf_model", default="results/perf_model.json", help="performance model JSON (scripts/fit_perf_model.py)")
    v.add_argument("--replicas", type=positive_int, default=1, help="GPU replicas (simulated)")
    v.add_argument("--max_batch", type=positive_int, default=1, help="largest batch a replica serves")
    v.add_argument("--dispatch", default="rr", choices=DISPATCH, help="round robin or join-shortest-queue")
    v.add_argument("--noise", default="lognormal", choices=NOISE, help="service-time noise (lognormal: the model's p50->p95)")
    o = p.add_argument_group("output and live")
    o.add_argument("--base_path", default="logs/sdxl_mixdq_eval", help="results go to <base_path>/queue_tests/<run_name>/")
    o.add_argument("--run_name", default=None, help="folder name (default: a timestamp)")
    o.add_argument("--out_dir", default=None, help="write here instead of <base_path>/queue_tests/<run_name>/")
    o.add_argument("--live", action="store_true", help="also replay every run against the in-process pipeline")
    o.add_argument("--calibrate", action="store_true", help="--live: time the generator for the simulator even if --perf_model exists")
    o.add_argument("--calibrate_repeats", type=int, default=3, help="timed calls per (res, mode, batch) when calibrating")
    o.add_argument("--prompt", default="a corgi in sunglasses", help="prompt of every live request (unless the trace has prompts)")
    o.add_argument("--cpu_threads", type=int, default=1,
                   help="--live on CPU: torch intra-op threads (1 leaves a core to the replay thread)")
    add_model_args(p, resolution=False, seed=dict(
        default=None, help="arrival/noise seed (default $MIXDQ_LOADTEST_SEED, else 0); live image i uses seed+i"),
        exec_mode=dict(default=None, help="exec mode: the perf model's cells to simulate (default: graph when "
                       "measured) and, with --live, the Runner's (default: compile on CUDA, else eager)"))
    q = p.add_argument_group("live quantized models")
    q.add_argument("--quantize_live", action="store_true",
                   help="--live: quantize a copy of the UNet for each w<b>a8 mode (else every mode runs the loaded model)")
    q.add_argument("--backend", default="fake", choices=BACKENDS, help="--quantize_live: quantized backend")
    q.add_argument("--calib_num", type=positive_int, default=8, help="--quantize_live: calibration prompts per new checkpoint")
    h = p.add_argument_group("HTTP service (scripts/serve.py)")
    h.add_argument("--target", nargs="+", default=None, metavar="URL",
                   help="also replay every run against this service, e.g. http://127.0.0.1:8000 (its modes, policy, "
                        "replicas, max batch, routing and performance model configure the simulator); several URLs: "
                        "every replica's own address (serve.py --direct_ingress), requests sent to them in turn")
    h.add_argument("--request_timeout_s", type=float, default=120.0, help="--target: a request unanswered this long times out")
    h.add_argument("--wait_s", type=float, default=0.0, help="--target: wait up to this long for the service to be ready")
    h.add_argument("--format", default="png", choices=list(IMAGE_FORMATS),
                   help="--target: the image format every request asks for (jpeg: a smaller body, lossy)")
    h.add_argument("--transport_ms", type=nonnegative_float, default=None,
                   help="--target: the service's per-request transport outside the replica (proxy, routing, network) "
                        "the simulator adds to each response and a closed-loop client's next send; default: measured "
                        "by a probe of 6 sequential requests before the runs")
    h.add_argument("--encode_ms", type=nonnegative_float, default=None,
                   help="--target: the same for the replica's work after the batch (image encode, hand-offs); "
                        "default: measured by the same probe")
    h.add_argument("--handoff_ms", type=nonnegative_float, default=None,
                   help="--target: the replica's handling of a request before it can join a batch (x-queue-ms at an "
                        "idle replica), which the simulator adds before each request's place in the queue; default: "
                        "measured by the same probe")
    h.add_argument("--hold_ms", type=nonnegative_float, default=None,
                   help="--target: how long the replica stays busy after each batch with its requests' work on the "
                        "device (serve.py --encode_on device: the batch's JPEG encode), which the simulator adds to each "
                        "batch; default: measured by the same probe (0 for encodes on the CPU)")
    h.add_argument("--gap_ms", type=nonnegative_float, default=None,
                   help="--target: how long the replica stays busy per batch beyond the performance model's batch time "
                        "and the hold (hand-offs between batches, the batch's slow-down while responses are sent), which "
                        "the simulator adds between batches without delaying their responses; default: measured by a "
                        "burst of back-to-back batches after the probe")
    args = p.parse_args(argv)
    if args.rates is None:
        args.rates = [] if args.load else [0.5, 1.0, 2.0, 4.0]
    if args.wbits is None and not args.target:
        args.wbits = [8, 6, 4]
    if args.live and args.replicas != 1:
        p.error("--live runs one in-process worker: use --replicas 1")
    if args.quantized and args.quantize_live:
        p.error("--quantize_live quantizes the FP16 UNet per mode: with --quantized the folder's model is the one served")
    if not 0 <= args.retry_backoff_ms < float("inf"):
        p.error(f"--retry_backoff_ms {args.retry_backoff_ms}: must be finite and >= 0")
    if args.trace:  # a bad trace stops the run before any model is built
        read_trace(repo_path(args.trace))
    if args.live:
        check_device_for_exec(args)  # before any model is built
    return args


def live_variants(args: argparse.Namespace, modes: list[str]) -> tuple[dict, dict[str, str]]:
    """One generate callable per mode: the --config model, plus a MixDQ-quantized copy of its UNet for every
    w<b>a8 mode with --quantize_live (sharing text encoders and VAE); other modes run the loaded model."""
    from quant_utils.cli import PROMPTS_32, pipeline_from_args, runner_from_args, sampling_from_args
    from quant_utils.generation import read_prompts
    from quant_utils.mixdq import quantized_copy

    cfg, pipe, device = pipeline_from_args(args)
    if str(device) == "cpu":  # oversubscribed OpenMP threads make CPU latency erratic (seconds instead of ~0.1 s)
        import torch
        torch.set_num_threads(args.cpu_threads)
    # the Runner as every script builds it (--vae, --compile_shapes, ...); no --exec: auto (compile on CUDA, else eager)
    runner_args = argparse.Namespace(**{**vars(args), "exec_mode": args.exec_mode or "auto"})
    sampling = sampling_from_args(args, cfg)
    steps, guidance = sampling["steps"], sampling["guidance_scale"]

    def generate(model) -> live.GenerateFn:
        runner = runner_from_args(model, runner_args, res=args.res)
        return lambda pr, se, h, w: runner(pr, se, h, w, steps, guidance)

    name = "fp16" if args.fp16 or cfg.dtype == "float16" else cfg.dtype
    if args.quantized:
        from quant_utils.mixdq import mode_label
        name = mode_label(pipe.unet)
    variants = {name: generate(pipe)}
    for mode in dict.fromkeys(modes) if args.quantize_live else ():
        if mode == name or mode not in BITS or mode == FP16:
            continue
        calib = read_prompts(repo_path(PROMPTS_32))[: args.calib_num]
        qpipe, info = quantized_copy(pipe, mode, cfg.name, repo_path(args.base_path) / mode / "ckpt.pth", calib, 0,
                                     args.res, args.res, steps, backend=args.backend)
        print(f"live {mode}: {info['origin']}, W avg {info['avg_wbits']:.2f} bits, {args.backend} backend")
        variants[mode] = generate(qpipe)
    return live.resolve_variants(variants, modes)


def perf_for_run(args, variants: dict, options: list[Option], out: Path) -> tuple[PerfModel, str]:
    """The performance model: --perf_model, or (--live, when it is of another device or absent) one calibrated here."""
    path = repo_path(args.perf_model)
    if not args.live:
        return PerfModel.load(path), args.perf_model
    from quant_utils.csvio import device_name

    here = device_name()
    if path.is_file() and not args.calibrate:
        pm = PerfModel.load(path)
        if pm.gpu == here:
            live.warm_up(variants, options, args.max_batch, args.prompt)
            return pm, args.perf_model
        print(f"{args.perf_model} models {pm.gpu}, this is {here}: calibrating the live generator")
    table = live.calibrate(variants, options, args.max_batch, args.calibrate_repeats, args.steps or 1, here, args.prompt)
    pm = PerfModel.fit(table, gpu=here, weights="live", note="calibrated on the live generator by load_test_stub --live")
    pm.save(out / "perf_model_live.json")
    return pm, str(out / "perf_model_live.json")


def configure_like_service(args: argparse.Namespace, out: Path) -> dict:
    """--target: the simulator (and --live) set up like the service: its modes (or the --wbits subset of them),
    policy, replicas, batching, routing and performance model (saved as perf_model_server.json)."""
    client.wait_ready(args.target[0], args.wait_s)
    info = client.server_info(args.target[0])
    settings = client.simulator_settings(info)
    if len(args.target) > 1:  # the client balances: each address must be another replica, all of them given
        replicas = {client.wait_ready(t, args.wait_s)["replica"] for t in args.target}
        if len(replicas) != len(args.target) or len(replicas) != info["serve"]["replicas"]:
            raise ConfigError(f"--target: {len(args.target)} addresses reach {len(replicas)} distinct replicas of a "
                              f"{info['serve']['replicas']}-replica service; give one address (its proxy) or every "
                              "replica's own address (serve.py --direct_ingress prints them)")
        settings["dispatch"] = "rr"  # the client sends request i to address i mod n
    served = settings.pop("wbits")
    if args.wbits and set(args.wbits) - set(served):
        raise ConfigError(f"--wbits {args.wbits}: the service at {args.target[0]} serves {[wbits_mode(b) for b in served]}")
    vars(args).update(settings, wbits=args.wbits or served,
                      perf_model=str(out / "perf_model_server.json"))
    atomic_write_text(out / "perf_model_server.json", json.dumps(info["perf_model"], indent=1) + "\n")
    if args.live and args.replicas != 1:
        raise ConfigError(f"--live runs one in-process worker: compare it with a one-replica service, not {args.replicas}")
    print(f"service {' '.join(args.target)}: {info['serve']['replicas']} replica(s) on {info['device']}, modes {info['labels']}, "
          f"policy {info['serve']['policy']}{'+admission' if args.admission else ''}, max batch {args.max_batch}, "
          f"dispatch {args.dispatch}; performance model: {info['perf_source']}")
    return info


def main(args: argparse.Namespace) -> None:
    # 1. seed, output folder, (--target) the service's configuration, modes
    seed = resolve_seed(args.seed)
    n = args.num_requests or (100 if args.live or args.target else 2000)
    out = repo_path(args.out_dir) if args.out_dir else (
        repo_path(args.base_path) / "queue_tests" / (args.run_name or time.strftime("%Y%m%d_%H%M%S")))
    service = configure_like_service(args, out) if args.target else None
    modes = [wbits_mode(b) for b in args.wbits]
    extra_modes = [wbits_mode(b) for b in args.adaptive_wbits]
    if args.res not in args.ladder and any(p != "static" for p in args.policies):
        raise ConfigError(f"--res {args.res} must be one of --ladder {args.ladder} (the adaptive ladder starts there)")
    ladder = args.ladder[args.ladder.index(args.res):] if args.res in args.ladder else [args.res]
    # 2. generators (live) and the performance model
    variants, runs_as = live_variants(args, modes + extra_modes) if args.live else ({}, {})
    notes = live.substitution_notes(runs_as)
    vae_modes = lambda m: [mode_key(m, v) for v in args.adaptive_vae]  # noqa: E731  ('w8a8+tiny')
    options = [Option(r, m) for r in ladder for m in modes + extra_modes + [x for m in modes for x in vae_modes(m)]]
    perf, perf_src = perf_for_run(args, variants, options, out)
    server = ServerConfig(args.replicas, args.max_batch, args.dispatch, args.noise, args.exec_mode, args.steps)
    if args.target:  # the simulator models the HTTP service: encode and transport too (the in-process runs have none)
        if None in (args.transport_ms, args.encode_ms, args.handoff_ms, args.hold_ms):
            probed = client.probe_transport(args.target[0], modes[0], args.prompt, fmt=args.format)
            vars(args).update({k: v for k, v in probed.items() if vars(args)[k] is None})
        if args.gap_ms is None:
            table = ServiceTable(perf, args.max_batch, args.exec_mode, args.steps)
            args.gap_ms = client.probe_gap(args.target[0], modes[0], args.prompt, 2 * args.max_batch * args.replicas,
                                           lambda res, m, b: table.p50[table.add(Option(res, m))][b], fmt=args.format)
        print(f"per {args.format} request besides its batch: the replica's handling before it {args.handoff_ms:.1f} ms, "
              f"encode (+ replica hand-offs) {args.encode_ms:.1f} ms, transport (proxy, routing, network) "
              f"{args.transport_ms:.1f} ms" + (f", the replica held after each batch {args.hold_ms:.1f} ms (encode on "
                                                f"its device)" if args.hold_ms else "") +
              f"; busy between batches beyond the model's batch time {args.gap_ms:.1f} ms")
        server = dataclasses.replace(server, transport_ms=args.transport_ms, encode_ms=args.encode_ms,
                                     handoff_ms=args.handoff_ms, hold_ms=args.hold_ms, gap_ms=args.gap_ms)
    # 3. the cells and their policies
    quality = None
    if args.quality_csv:
        from quant_utils.csvio import read_csv
        quality = read_csv(repo_path(args.quality_csv))
    cells = sweep.build_cells(args.patterns, modes, args.policies, n, conc=args.conc, rates=args.rates, loads=args.load,
                              burstiness=args.burstiness, burst_size=args.burst_size, burst_every_s=args.burst_every_s,
                              trace=args.trace and str(repo_path(args.trace)), retry_backoff_ms=args.retry_backoff_ms,
                              capacity=lambda m: perf.capacity(m, args.res, args.max_batch, args.exec_mode) * args.replicas)
    make_policy = lambda c: build_policy(c.policy, c.mode, args.res, ladder, bits_ladder=extra_modes + vae_modes(c.mode),  # noqa: E731
                                         q_high=args.q_high, q_low=args.q_low, slo_ms=args.slo_ms,
                                         admission=args.admission, quality=quality, score=args.quality_col)
    # 4. simulate every cell; with --live, replay the same traces against the pipeline
    common = dict(server=server, static_res=args.res, seed=seed, slo_ms=args.slo_ms, perf=perf)
    results, requests = sweep.run_cells(cells, make_policy, lambda w, p: simulate(w, p, perf, server, seed), "sim",
                                        progress=lambda c: tqdm(c, desc="simulating", unit="run"), **common)
    fidelity = fidelity_http = overhead = split = None
    sim_results, live_res = results, None
    if args.live:
        prompts = [args.prompt]
        run = lambda w, p: live.run_live(w, p, variants, ServiceTable(perf, args.max_batch, args.exec_mode, args.steps), prompts, seed)  # noqa: E731
        live_res, live_req = sweep.run_cells(cells, make_policy, run, "live",
                                             progress=lambda c: tqdm(c, desc="live", unit="run"), **common)
        in_process = results
        none = dict(transport_ms=0.0, encode_ms=0.0, handoff_ms=0.0, hold_ms=0.0, gap_ms=0.0)  # the HTTP service's own costs
        if any(getattr(server, k) for k in none):  # in process: none of them, its own simulation
            in_process, _ = sweep.run_cells(cells, make_policy, lambda w, p: simulate(
                w, p, perf, dataclasses.replace(server, **none), seed), "sim", **common)
        fidelity = sweep.fidelity_table(in_process, live_res, runs_as)
        results = pd.concat([results, live_res], ignore_index=True)
        requests = pd.concat([requests, live_req], ignore_index=True)
    if args.target:  # the same traces over HTTP; the service's policy decides, each request asks for its cell's mode
        current = {}

        def http_policy(c):  # run_cells asks for the policy just before each run: remember the cell (its mode)
            current["cell"] = c
            return make_policy(c)

        def run_http(w, p):
            cell = current["cell"]
            r = client.run_http(w, args.target, cell.mode, w.prompts or [args.prompt], seed, args.request_timeout_s,
                                args.replicas, fmt=args.format)
            tqdm.write(f"http {cell.run_id}: {r.notes[0]}")
            return r

        http_res, http_req = sweep.run_cells(cells, http_policy, run_http, "http",
                                             progress=lambda c: tqdm(c, desc="http", unit="run"), **common)
        fidelity_http = sweep.fidelity_table(sim_results, http_res, service["labels"])
        split = client.latency_split(http_req)
        if live_res is not None:
            overhead = client.overhead_table(live_res, http_res, http_req)
        results = pd.concat([results, http_res], ignore_index=True)
        requests = pd.concat([requests, http_req], ignore_index=True)
    # 5. write the results, the per-request table, the report and the resolved config
    counts = sorted(int(c) for c in results["n_requests"].unique())  # a trace run has the trace's length
    per_run = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    # what the measured rows ran on (the simulated ones: the performance model's perf_* lines)
    live_backend = args.backend if args.quantize_live else "none (modes run the loaded model)"
    live_weights = weights_label(model_config_from_args(args), args) if args.live else ""
    weights = (f"{service.get('weights', 'not reported')} (service)" if service else "") + (
        f"{' + ' if service else ''}{live_weights} (live)" if args.live else "")
    backend = (" ".join(f"{m}={label}" for m, label in service["labels"].items()) + " (service)" if service else "") + (
        f"{' + ' if service else ''}{live_backend} (live)" if args.live else "")
    meta = provenance(script="load_test_stub", weights=weights or f"simulated only: {perf.weights} (performance model)",
                      backend=backend or f"simulated only: {perf.backends_label()} (performance model)",
                      perf_model=perf_src, perf_gpu=perf.gpu, perf_weights=perf.weights,
                      perf_backends=perf.backends_label(),
                      perf_synthetic=perf.synthetic, seed=seed,
                      sources="sim" + ("+live" if args.live else "") + (f"+http {' '.join(args.target)}" if args.target else ""),
                      transport_ms=f"{server.transport_ms:.2f}" + (
                          " (+ encode_ms: added to every sim row's response; in-process fidelity simulated without "
                          "them)" if server.transport_ms or server.encode_ms else ""),
                      encode_ms=f"{server.encode_ms:.2f}",
                      handoff_ms=f"{server.handoff_ms:.2f}" + (" (added before every sim row's place in the queue)"
                                                               if server.handoff_ms else ""),
                      hold_ms=f"{server.hold_ms:.2f}" + (" (added to every sim batch: the replica's encode on its device)"
                                                         if server.hold_ms else ""),
                      gap_ms=f"{server.gap_ms:.2f}" + (" (the replica busy after every sim batch, its responses gone)"
                                                       if server.gap_ms else ""),
                      **({"service": f"{service['device']}, {service.get('weights', 'weights not reported')} weights, "
                                     f"models {service['labels']}", "format": args.format} if service else {}),
                      **({"live": f"{live_weights} weights, quantized backend {live_backend}"} if args.live else {}),
                      notes=" | ".join(notes) or "none")
    write_csv(results, out / "mixdq_queue_results.csv", meta)
    write_csv(requests.round(REQUEST_CSV_DECIMALS), out / "mixdq_queue_requests.csv", meta)
    header = [f"MixDQ queue test @ {out.name}", f"performance model: {perf_src} ({perf.gpu}"
              f"{', SYNTHETIC' if perf.synthetic else ''}); seed {seed}; {per_run} requests per run",
              f"server: {args.replicas} replica(s), max batch {args.max_batch}, dispatch {args.dispatch}, "
              f"SLO {args.slo_ms:g} ms; 'sim' rows are simulated, 'live' and 'http' rows measured", *notes]
    lines = sweep.text_report(results, header)
    if fidelity is not None:
        write_csv(fidelity, out / "mixdq_queue_fidelity.csv", meta)
        lines += ["", "fidelity (simulated vs live):", fidelity.to_string(index=False, float_format=lambda x: f"{x:.1f}")]
    if fidelity_http is not None:
        write_csv(fidelity_http, out / "mixdq_queue_fidelity_http.csv", meta)
        lines += ["", "fidelity (simulated vs HTTP service):",
                  fidelity_http.to_string(index=False, float_format=lambda x: f"{x:.1f}")]
        http_rows = results[results["source"] == "http"]
        lines += ["", "HTTP accounting (ok + rejected + error + timeout = sent):"] + [
            f"  {r.run_id}: sent {r.n_requests} = ok {r.n_done} + rejected {r.n_rejected} + error {r.n_error} + "
            f"timeout {r.n_timeout}" for r in http_rows.itertuples()]
        write_csv(split.round(3), out / "mixdq_queue_http_split.csv", meta)
        lines += ["", f"HTTP latency split, served requests, ms ({args.format}; means add up: latency = queue + service "
                      "+ encode + replica_other + transport; p50 overhead = p50 of latency - queue - service):",
                  split.to_string(index=False, float_format=lambda x: f"{x:.1f}")]
    if overhead is not None:
        write_csv(overhead, out / "mixdq_queue_overhead.csv", meta)
        lines += ["", "HTTP + Ray overhead (HTTP - in-process; per-request latency - queue - service):",
                  overhead.to_string(index=False, float_format=lambda x: f"{x:.1f}")]
    atomic_write_text(out / "mixdq_queue_results.txt", "\n".join(lines) + "\n")
    config = dict(vars(args), seed=seed, modes=modes, num_requests=counts[0] if len(counts) == 1 else counts,
                  ladder=ladder, perf_model=perf_src,
                  perf_gpu=perf.gpu, perf_synthetic=perf.synthetic, notes=notes,
                  policies_resolved={c.run_id: make_policy(c).describe() for c in cells}, cells=sweep.cell_config(cells),
                  service={k: v for k, v in service.items() if k != "perf_model"} if service else None)
    atomic_write_text(out / "config.json", json.dumps(config, indent=1, default=str) + "\n")
    print("\n".join(lines))
    print(f"\nWrote {out}/mixdq_queue_results.csv (+ .txt, mixdq_queue_requests.csv, config.json)")
    print(f"Next: python scripts/plot_mixdq_queue_results.py {out}/mixdq_queue_results.csv")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
