"""The Ray Serve service (quant_utils/serving/server.py, scripts/serve.py) and its HTTP load client, on the CPU.

One module-scoped service: scripts/serve.py with 2 replicas of the tiny model (fp16 + a w8a8 checkpoint), batches
of 4, static policy with admission control, on loopback ports; the last test stops it with SIGINT and checks that
no process is left. Pure functions (request parsing, image encoding, the replica queue, the client's latency split)
are tested without Ray.
"""
import asyncio
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, run_main
from quant_utils.csvio import read_csv, read_provenance
from quant_utils.perf_model import PerfModel, synthetic_latency_frame
from quant_utils.serving import client
from quant_utils.serving import workloads as wl
from quant_utils.serving.policies import Option
from quant_utils.serving.images import (IMAGE_FORMATS, encode_image, encode_image_timed, encode_jpeg_on_device,
                                         encode_png, encode_png_on_device, is_image)
from quant_utils.serving.images import PngOnHost, _crc32_gf2, crc32_on_device
from quant_utils.errors import ConfigError
from quant_utils.serving.server import ReplicaQueue, RequestError, ServeConfig, parse_generate
from quant_utils.serving.simulator import BucketQueue, ServiceTable
from quant_utils.serving.sweep import RESULT_COLUMNS

SLO_MS = 250.0
SLACK_MS = 0.01  # headers carry 3 decimals
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's pydantic models


# --------------------------------------------------------------------------- without Ray
def test_parse_generate_accepts_good_and_names_what_is_wrong():
    r = parse_generate(b'{"prompt": "a cat", "seed": 3, "res": 32, "mode": "w8a8", "steps": 2, "format": "jpeg"}',
                       ["fp16", "w8a8"], [64, 32])
    assert (r.prompt, r.seed, r.res, r.mode, r.steps, r.format) == ("a cat", 3, 32, "w8a8", 2, "jpeg")
    for body in (b'{"prompt": "a cat"}', b'{"prompt": "a cat", "format": null}'):
        r = parse_generate(body, ["fp16", "w8a8"], [64, 32])
        assert (r.seed, r.res, r.mode, r.steps, r.format) == (0, 0, "fp16", 0, "png")
    bad = {b"nope": "not valid JSON", b"[1]": "JSON object", b'{"prompt": " "}': "non-empty", b"{}": "non-empty",
           b'{"prompt": "x", "mode": "w4a8"}': "unknown mode", b'{"prompt": "x", "res": 128}': "ladder",
           b'{"prompt": "x", "seed": -1}': "seed", b'{"prompt": "x", "seed": true}': "seed",
           b'{"prompt": "x", "steps": 5}': "steps", b'{"prompt": "x", "colour": 1}': "unknown field",
           b'{"prompt": 7}': "non-empty", b"\xff\xfe": "not valid JSON", b'{"prompt": "x", "format": "gif"}': "unknown format",
           b'{"prompt": "x", "format": ["png"]}': "unknown format", b'{"prompt": "x", "format": "PNG"}': "unknown format"}
    for body, reason in bad.items():
        with pytest.raises(RequestError, match=reason) as e:
            parse_generate(body, ["fp16", "w8a8"], [64, 32])
        assert e.value.status == 400 and "\n" not in str(e.value)


def test_encode_png_is_lossless_at_every_level():
    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for level in (0, 1, 6):
        back = np.asarray(Image.open(io.BytesIO(encode_png(img, level))).convert("RGB"))
        assert back.shape == img.shape and np.array_equal(back, img)


@pytest.mark.parametrize("h, w", [(1, 1), (21, 1024), (22, 1024), (300, 777), (1024, 1024)])
def test_encode_png_level_0_is_a_valid_png(h, w):
    """Level 0 at several sizes (one to 49 of zlib's stored blocks): every chunk's CRC, the zlib stream (zlib checks
    its adler32) holding exactly the unfiltered rows, and the image back."""
    import struct
    import zlib

    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    body = encode_png(img, 0)
    chunks, pos = {}, 8
    while pos < len(body):
        (n,), kind = struct.unpack(">I", body[pos:pos + 4]), body[pos + 4:pos + 8]
        data = body[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", body[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + data), kind
        chunks[kind] = data
        pos += 12 + n
    assert pos == len(body) and list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, 3 * w)], axis=1)
    assert zlib.decompress(chunks[b"IDAT"]) == rows.tobytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), img)


def test_every_format_decodes_to_the_image_and_the_client_knows_it():
    """A smooth image: PNG exact, JPEG close and much smaller; each body passes the client's check of its own
    format only (the client calls any other body an error)."""
    y, x = np.mgrid[0:96, 0:160] / 96.0
    img = (np.stack([x / 2, y, (x + y) / 3], -1) * 255).astype(np.uint8)
    bodies = {fmt: encode_image(img, fmt, jpeg_quality=90) for fmt in IMAGE_FORMATS}
    for fmt, body in bodies.items():
        back = Image.open(io.BytesIO(body))
        assert back.format == fmt.upper() and back.size == (160, 96)
        assert np.abs(np.asarray(back.convert("RGB"), float) - img).mean() < (0 if fmt == "png" else 2) + 1e-9
        assert [f for f in IMAGE_FORMATS if is_image(body, f)] == [fmt]
    assert len(bodies["jpeg"]) * 5 < len(bodies["png"])
    assert len(encode_image(img, "jpeg", jpeg_quality=30)) < len(bodies["jpeg"])
    with pytest.raises(ValueError, match="format 'gif'"):
        encode_image(img, "gif")
    # torchvision's encoder where the tensor is (the CPU here; nvJPEG on a GPU): the same image, a body of
    # Pillow's size at the same quality, one body per image of the batch
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    on_device = encode_jpeg_on_device(torch.stack([chw, chw.flip(2)]), 90)
    assert len(on_device) == 2 and all(is_image(b, "jpeg") for b in on_device)
    back = np.asarray(Image.open(io.BytesIO(on_device[0])).convert("RGB"), float)
    assert np.abs(back - img).mean() < 2 and 0.8 < len(on_device[0]) / len(bodies["jpeg"]) < 1.25
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg_on_device(chw[None].float(), 90)
    enc = encode_image_timed(img, "png")
    assert enc.body == encode_image(img, "png") and enc.ms > 0 and (enc.faults >= 0 or math.isnan(enc.faults))


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 4097, 70001])
def test_crc32_in_tensor_ops_is_zlibs(n):
    """crc32_on_device's tensor form (GF(2) matrices, chunks combined up a tree, zero chunks in front): zlib.crc32 of
    every row, at lengths around the 64-byte chunk and between powers of two; the CPU form is zlib itself."""
    rows = torch.from_numpy(np.random.default_rng(n).integers(0, 256, (3, n), dtype=np.uint8))
    want = [zlib.crc32(r.numpy()) for r in rows]
    assert _crc32_gf2(rows).tolist() == want and crc32_on_device(rows).tolist() == want
    assert _crc32_gf2(torch.zeros(1, n, dtype=torch.uint8)).item() == zlib.crc32(bytes(n))
    with pytest.raises(ValueError, match="uint8"):
        crc32_on_device(rows.int())


@pytest.mark.parametrize("h, w", [(1, 1), (7, 13), (15, 1456), (30, 1456), (64, 48)])  # 65535 rows' bytes: one block
def test_png_made_on_the_device_is_the_image(h, w, monkeypatch):
    """encode_png_on_device (the service's --encode_on device PNG): a valid PNG of each image of the batch, whose IDAT
    holds a zlib stream zlib itself accepts (stored blocks, Adler-32), with the CRC libpng checks, computed in tensor
    ops (as on a GPU), or on the host by PngOnHost.body (the service's way) to the same file; a stored-block boundary
    exactly at the end of the rows included (15 x 1456)."""
    import quant_utils.serving.images as images_mod

    monkeypatch.setattr(images_mod, "crc32_on_device", images_mod._crc32_gf2)  # the GPU's form, here on the CPU
    rng = np.random.default_rng(h * w)
    imgs = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    files = encode_png_on_device(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous())
    for img, file in zip(imgs, files):
        body = bytes(file)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), img)
        n = int.from_bytes(body[33:37], "big")
        assert body[37:41] == b"IDAT" and int.from_bytes(body[41 + n:45 + n], "big") == zlib.crc32(body[37:41 + n])
        rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, 3 * w)], 1)
        assert zlib.decompress(body[41:41 + n]) == rows.tobytes()  # zlib checks the Adler-32 too
        assert body[41 + n + 4:] == encode_png(img)[-12:]  # IEND
        assert body[:33] == encode_png(img)[:33]  # signature, IHDR
    # the service's form: the CRC left to the host (PngOnHost.body, zlib), the same file; its 4 bytes 0 before
    host = encode_png_on_device(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), crc_on_device=False)
    for file, partial in zip(files, host):
        assert not partial[-16:-12].any() and PngOnHost(partial).body() == bytes(file)
    with pytest.raises(ValueError, match="uint8"):
        encode_png_on_device(torch.zeros(1, 3, 2, 2))


def test_keep_freed_heap_makes_repeated_encodes_reuse_their_pages():
    """In a fresh process (the setting is process-wide): after keep_freed_heap, encoding the same 1024 px image again
    faults in (almost) no new pages; each of its ~3 MB buffers would otherwise be ~770 fresh pages."""
    code = """if True:
        import statistics, numpy as np
        from quant_utils.serving.images import encode_image_timed, keep_freed_heap
        img = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        if not keep_freed_heap():
            print("no-mallopt"); raise SystemExit
        faults = [encode_image_timed(img, "png").faults for _ in range(8)]
        print(statistics.median(faults[2:]))"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.strip() in ("no-mallopt", "nan"):
        pytest.skip("no glibc mallopt or no per-thread fault counts on this OS")
    assert float(out.stdout) < 50


def test_replica_queue_backlog_matches_the_simulators():
    perf = PerfModel.fit(synthetic_latency_frame(), gpu="synthetic", with_loo=False)
    table = ServiceTable(perf, 4)
    ks = [table.add(Option(r, "w8a8")) for r in (512, 1024)]
    ours, sims = ReplicaQueue(table), BucketQueue(table)
    for rid in range(11):
        k = ks[rid % 3 == 0]
        ours.push((k, 1), client_job(rid))
        sims.push(k, rid)
        assert ours.n == sims.n and ours.backlog_ms == pytest.approx(sims.backlog_ms)
    key = ours.oldest()
    taken = ours.take(key, 4)
    k_sim, batch = sims.pop_batch(4)
    assert key[0] == k_sim and [j.rid for j in taken] == batch and ours.backlog_ms == pytest.approx(sims.backlog_ms)
    other = next(k for k, q in ours.buckets.items() if q)
    ours.remove(other, ours.buckets[other][1])
    assert ours.n == sims.n - 1 and [j.rid for j in ours.buckets[other]][:2] == [1, 4]


def client_job(rid):
    from quant_utils.serving.server import GenerateRequest, _Job

    return _Job(rid, GenerateRequest("x"), Option(512, "w8a8"), 1, 0.0, None)


def test_replica_hands_one_full_batch_ahead_to_a_busy_device():
    """ImageService._feed (no Ray: its methods bound to a stand-in holding the state they use): a free device gets the
    oldest bucket's batch at once, full or not; a busy one gets the next batch early only when it is full (the batch
    the device would take when free), one at a time, and the policies still see those requests as queued (backlog,
    queue length) until the batch before ends."""
    from types import MethodType, SimpleNamespace

    from quant_utils.serving.server import GenerateRequest, ImageService, _Job

    perf = PerfModel.fit(synthetic_latency_frame(), gpu="synthetic", with_loo=False)
    table = ServiceTable(perf, 2)
    k = table.add(Option(512, "w8a8"))
    svc = SimpleNamespace(cfg=SimpleNamespace(max_batch=2, batch_wait_s=0.0), table=table, queue=ReplicaQueue(table),
                          in_flight=set(), forming=None, ahead=[], ahead_ms=0.0, m_queue=SimpleNamespace(set=lambda n: None))
    for name in ("_feed", "_release", "_load"):
        setattr(svc, name, MethodType(getattr(ImageService.func_or_class, name), svc))
    jobs = [_Job(i, GenerateRequest("x"), Option(512, "w8a8"), 1, 0.0, asyncio.Event()) for i in range(6)]
    svc.queue.push((k, 1), jobs[0])
    svc._feed()  # a free device: the one request goes
    assert svc.in_flight == {jobs[0]} and not svc.ahead and svc.forming == ((k, 1), 1)
    svc.forming = None  # its batch started
    svc.queue.push((k, 1), jobs[1])
    svc._feed()  # busy, half a batch waiting: it waits (more may join it)
    assert svc.in_flight == {jobs[0]} and svc.queue.n == 1
    for j in jobs[2:]:
        svc.queue.push((k, 1), j)
    svc._feed()  # busy, a full batch waiting: handed over early, one only
    assert svc.ahead == jobs[1:3] and svc.in_flight == set(jobs[:3]) and svc.ahead_ms == table.p50[k][2]
    assert jobs[1].released.is_set() and not jobs[3].released.is_set() and svc.queue.n == 3
    assert [j.ahead for j in jobs[:3]] == [False, True, True]
    svc.running_end = 0.010  # the running batch ends in 10 ms
    assert svc._load(0.0) == (pytest.approx(10 + table.p50[k][2] + table.batched_ms(k, 3)), 5)
    svc.forming = None
    svc._feed()  # a second full batch waits for the first ahead to start
    assert svc.ahead == jobs[1:3] and svc.queue.n == 3


def test_http_accounting_refuses_a_lost_request_and_splits_the_latency():
    recs = [{"request": 0, "arrival_s": 0.0, "done_s": 0.1, "status": 200, "outcome": "ok", "bytes": 3000,
             "body": {"format": "jpeg"},
             "headers": {"x-service-ms": "50", "x-queue-ms": "10", "x-encode-ms": "2", "x-encode-work-ms": "1.5", "x-encode-faults": "3",
                         "x-replica-ms": "65",
                         "x-res": "64", "x-mode": "fp16", "x-batch-size": "1", "x-replica": "a"}},
            {"request": 1, "arrival_s": 0.0, "done_s": 0.2, "status": 0, "outcome": "timeout", "reason": "t"}]
    df = client.request_table(recs, "fp16")
    assert client.accounting(df, 2) == {"ok": 1, "rejected": 0, "error": 0, "timeout": 1}
    assert df.loc[0, "overhead_ms"] == pytest.approx(100 - 10 - 50) and np.isnan(df.loc[1, "finish_s"])
    ok = df.loc[0]  # 100 ms = queue 10 + service 50 + encode 2 + replica other 3 + transport 35
    assert (ok["encode_ms"], ok["replica_other_ms"], ok["transport_ms"]) == pytest.approx((2, 3, 35))
    assert (ok["encode_work_ms"], ok["encode_faults"]) == pytest.approx((1.5, 3)) and np.isnan(df.loc[1, "encode_work_ms"])
    assert (ok["format"], ok["bytes"], df.loc[1, "format"]) == ("jpeg", 3000, "png")
    assert np.isnan(df.loc[1, ["encode_ms", "replica_other_ms", "transport_ms"]].astype(float)).all()
    split = client.latency_split(df.assign(run_id="r"))
    assert split.iloc[0][["format", "n_ok", "body_kb", "mean_latency_ms", "mean_queue_ms", "mean_transport_ms",
                          "p50_overhead_ms", "p50_encode_work_ms"]].tolist() == ["jpeg", 1, 3.0, pytest.approx(100), 10,
                                                                                  35, pytest.approx(40), 1.5]
    with pytest.raises(RuntimeError, match="lost"):
        client.accounting(df, 3)


@contextmanager
def loopback_service(handler):
    """An aiohttp web app answering POST /generate on a loopback port, in its own thread and event loop (the client
    under test runs its own with asyncio.run); yields its URL."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/generate", handler)
    runner, port = web.AppRunner(app, access_log=None), free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_gap_probe_times_back_to_back_batches_on_a_mock_replica():
    """client.probe_gap against a mock replica that runs one request at a time for 20 ms, then stays busy 5 ms more
    (its start stamps on its own clock, as serve.py's x-batch-start-ms), turning every fourth request away (429):
    with two clients each batch's successor is waiting, so the excess over a 18 ms model is 2 + 5 ms; one client
    leaves the replica idle between batches: nothing to time, 0."""
    from aiohttp import web

    body = encode_image(np.zeros((8, 8, 3), np.uint8), "png")
    state = {"free_at": 0.0, "t0": time.perf_counter()}

    async def replica(request):
        if (await request.json())["seed"] % 4 == 3:  # admission control's answer now and then: skipped
            return web.json_response({"error": "rejected by admission control: test"}, status=429)
        now = (time.perf_counter() - state["t0"]) * 1e3
        start = max(now, state["free_at"])
        state["free_at"] = start + 20.0 + 5.0
        await asyncio.sleep((start + 20.0 - now) / 1e3)
        return web.Response(body=body, headers={
            "x-res": "64", "x-mode": "fp16", "x-batch-size": "1", "x-replica": "r1", "x-service-ms": "20.000",
            "x-queue-ms": f"{start - now:.3f}", "x-batch-start-ms": f"{start:.3f}", "x-encode-ms": "0.1",
            "x-encoded-on": "cpu"})
    seen = []
    model = lambda res, mode, b: seen.append((res, mode, b)) or 18.0  # noqa: E731
    with loopback_service(replica) as url:
        assert client.probe_gap(url, "fp16", "p", clients=2, batch_ms=model, rounds=4) == pytest.approx(7.0, abs=0.01)
        assert set(seen) == {(64, "fp16", 1)}
        assert client.probe_gap(url, "fp16", "p", clients=1, batch_ms=model, rounds=3) == 0.0


def test_http_client_open_and_closed_loop_with_retries_on_a_mock_service():
    """The client against a loopback mock service: 429s, 500s and broken connections recorded, a closed-loop client
    resends a rejected request (same body, attempt + 1) after the back-off, and nothing is lost."""
    from aiohttp import web

    image = np.zeros((8, 8, 3), np.uint8)
    seen = []

    async def service(request):
        body = await request.json()
        seen.append(body)
        k = len(seen)
        if k % 5 == 1:
            return web.json_response({"error": "rejected by admission control: test"}, status=429)
        if k % 7 == 0:
            return web.json_response({"error": "generation failed: test"}, status=500)
        if k % 11 == 0:
            request.transport.close()  # the connection drops before an answer
            return web.Response()
        fmt = "png" if k % 13 == 0 else body["format"]  # a PNG whatever was asked: an error for a JPEG request
        return web.Response(body=encode_image(image, fmt), headers={
            "x-res": "8", "x-mode": body["mode"], "x-service-ms": "1.5", "x-queue-ms": "0.5", "x-encode-ms": "0.1",
            "x-replica-ms": "2.2", "x-batch-size": "1", "x-replica": "r1"})
    closed = wl.closed_loop(30, 3)
    closed.retry_backoff_s = 0.01  # the closed-loop retry back-off (the simulator's default when it has one)
    for w, fmt in ((wl.poisson(30, 200.0, seed=1), "png"), (closed, "jpeg")):
        seen.clear()
        with loopback_service(service) as url:
            run = client.run_http(w, url, "w8a8", ["p"], seed=10, fmt=fmt)
        df = run.requests
        counts = client.accounting(df, 30)
        assert counts["rejected"] > 0 and counts["error"] > 0 and counts["ok"] > 0 and counts["timeout"] == 0
        errors = df[df["outcome"] == "error"]
        assert set(errors["status"]) <= {0, 200, 500} and (df["reason"].str.len() > 0).sum() >= 7
        assert (errors["status"] == 0).any() and (errors["status"] == 500).any()  # dropped connections, 5xx
        assert (errors["status"] == 200).any() == (fmt == "jpeg")  # the PNG answer to a JPEG request
        assert (errors.loc[errors["status"] == 200, "reason"] == "HTTP 200 without a JPEG body").all()
        assert {b["format"] for b in seen} == {fmt} and (df["format"] == fmt).all()
        ok = df[df["outcome"] == "ok"]
        assert (ok["res"] == 8).all() and (ok["mode"] == "w8a8").all() and (ok["replica_id"] == "r1").all()
        assert (ok["bytes"] > 0).all() and np.allclose(ok["replica_other_ms"], 0.1)
        seeds = [b["seed"] for b in seen]
        if w.closed:  # a rejected request is sent again (same seed, next attempt) while requests remain
            retries = int((df["attempt"] > 1).sum())
            assert retries > 0 and retries == len(seeds) - len(set(seeds)) and retries <= counts["rejected"]
        else:
            assert (df["attempt"] == 1).all() and len(set(seeds)) == 30


def test_serve_script_user_errors_before_ray_starts(tmp_path, capsys):
    assert run_main("serve.py", "--modes", "w5a8") == 2
    assert "w5a8" in capsys.readouterr().err
    assert run_main("serve.py", "--modes", "fp16", "w8a8", "--ckpt_base", tmp_path) == 2
    assert "quant_txt2img.py" in capsys.readouterr().err
    assert run_main("serve.py", "--res", 48, "--ladder", 64, 32) == 2
    assert "ladder" in capsys.readouterr().err
    assert run_main("serve.py", "--direct_ingress", "--address", "auto") == 2
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS=1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="encode_on 'gpu'"):  # argparse's choices guard the flag; this, the config
        ServeConfig(config=TINY, encode_on="gpu").resolve()


# --------------------------------------------------------------------------- the service
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_pipe):
    from quant_utils.mixdq import quantized_copy

    base = tmp_path_factory.mktemp("serve")
    quantized_copy(tiny_pipe, "w8a8", "sdxl_turbo_tiny", base / "w8a8" / "ckpt.pth", ["a cat", "a dog"], 0, 64, 64, 1)
    port, metrics_port = free_port(), free_port()
    log = base / "serve.log"
    direct_lo = free_port()  # direct ingress: each replica's own port from this range, not Ray's default 30000+
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "RAY_metrics_report_interval_ms": "1000",
           "RAY_AUTH_MODE": "disabled",  # so that this test process can join the cluster to kill a replica
           "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_lo),
           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_lo + 40)}
    cmd = [sys.executable, str(REPO / "scripts" / "serve.py"), "--config", TINY, "--replicas", 2, "--max_batch", 4,
           "--modes", "fp16", "w8a8", "--ckpt_base", base, "--ladder", 64, 32, "--admission", "--slo_ms", SLO_MS,
           "--calibrate_repeats", 2, "--port", port, "--metrics_port", metrics_port, "--num_cpus", 2,
           "--health_check_period_s", 2, "--direct_ingress", "--encode_on", "device"]  # JPEG whole, PNG but its CRC
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 150
    while "ready; Ctrl-C stops" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve.py did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    address = next(ln.split(": ", 1)[1] for ln in log.read_text().splitlines() if ln.startswith("ray address: "))
    yield dict(url=f"http://127.0.0.1:{port}", metrics=f"http://127.0.0.1:{metrics_port}/metrics", proc=proc,
               log=log, address=address)
    if proc.poll() is None:  # the last test stops it; this is only for a failed run
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_bad_requests_get_4xx_with_a_one_line_reason(service):
    url = service["url"]
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    cases = [({"prompt": ""}, 400, "non-empty"), ({"prompt": "x", "mode": "w4a8"}, 400, "unknown mode"),
             ({"prompt": "x", "res": 128}, 400, "ladder"), ({"prompt": "x", "steps": 0}, 400, "steps"),
             ({"prompt": "x", "format": "gif"}, 400, "unknown format"), ({"prompt": "x", "format": 5}, 400, "unknown format")]
    for body, status, reason in cases:
        r = httpx.post(url + "/generate", json=body)
        assert r.status_code == status and reason in r.json()["error"] and "\n" not in r.json()["error"]
    r = httpx.post(url + "/generate", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(url + "/generate", content=json.dumps({"prompt": "x" * 20000}).encode())
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert httpx.get(url + "/generate").status_code == 405 and httpx.get(url + "/nothing").status_code == 404


def replica_times_ms(h: dict) -> dict[str, float]:
    """The replica's timing headers as numbers (KeyError/ValueError if one is missing or not a number)."""
    return {k: float(h[f"x-{k}-ms"]) for k in ("queue", "service", "encode", "replica")}


def test_images_say_what_was_served_and_depend_on_their_seed_only(service):
    url = service["url"]
    img, h = client.fetch_image(url, "a red bicycle", seed=5)
    assert img.shape == (64, 64, 3) and (h["x-res"], h["x-mode"], h["x-model"]) == ("64", "fp16", "float32")
    assert float(h["x-service-ms"]) > 0 and float(h["x-queue-ms"]) >= 0 and h["x-vae"] == "fp16" and h["x-replica"]
    assert (h["content-type"], h["x-format"]) == ("image/png", "png")
    assert 0 < float(h["x-encode-work-ms"]) <= float(h["x-encode-ms"])  # the encode alone is inside its wait
    assert float(h["x-encode-faults"]) >= 0  # Linux counts them per thread
    again, _ = client.fetch_image(url, "a red bicycle", seed=5)
    other, _ = client.fetch_image(url, "a red bicycle", seed=6)
    assert np.array_equal(img, again) and not np.array_equal(img, other)
    small, h = client.fetch_image(url, "a red bicycle", seed=5, res=32, mode="w8a8")
    assert small.shape == (32, 32, 3) and (h["x-mode"], h["x-model"]) == ("w8a8", "w8a8-fake")
    jpeg, hj = client.fetch_image(url, "a red bicycle", seed=5, format="jpeg")
    assert jpeg.shape == (64, 64, 3) and (hj["content-type"], hj["x-format"]) == ("image/jpeg", "jpeg")
    assert (h["x-encoded-on"], hj["x-encoded-on"]) == ("device+cpu", "device")  # --encode_on device
    err = lambda a: np.abs(a.astype(float) - jpeg).mean()
    assert err(img) < err(other)  # lossy, but the same image
    for hdr in (h, hj):  # the replica's time: queue + service + encode + its hand-offs
        t = replica_times_ms(hdr)
        assert min(t.values()) >= 0 and t["encode"] > 0  # (an encode takes more than the headers' 1 µs)
        assert t["replica"] >= t["queue"] + t["service"] + t["encode"] - SLACK_MS


def test_every_replica_also_answers_directly_without_the_proxy(service, tmp_path, capsys):
    """--direct_ingress: serve.py names each replica's own address; each answers /healthz and /generate itself; the
    load test sends to every replica's address in turn (the client balances: the simulator dispatches round robin),
    and refuses addresses that are not every replica once."""
    direct = dict(ln.split("replica ", 1)[1].split(" directly (no proxy): ")
                  for ln in service["log"].read_text().splitlines() if " directly (no proxy): " in ln)
    assert len(direct) == 2 and len(set(direct.values())) == 2
    for rid, url in direct.items():
        assert httpx.get(url + "/healthz").json()["replica"] == rid
        r = httpx.post(url + "/generate", json={"prompt": "a cat", "seed": 1}, timeout=60)
        assert r.status_code == 200 and is_image(r.content, "png") and r.headers["x-replica"] == rid
    out = tmp_path / "lt"
    assert run_main("load_test_stub.py", "--target", *direct.values(), "--patterns", "poisson", "--rates", 6,
                    "--num_requests", 12, "--wbits", 16, "--out_dir", out) == 0
    res = read_csv(out / "mixdq_queue_results.csv")
    assert set(res["dispatch"]) == {"rr"} and set(res["replicas"]) == {2}
    req = read_csv(out / "mixdq_queue_requests.csv")
    http = req[req["source"] == "http"].sort_values("request")
    assert len(http) == 12 and set(http["outcome"]) <= set(client.OUTCOMES)
    ok = http[http["outcome"] == "ok"]  # request i went to address i mod 2: the replicas alternate
    assert set(ok["replica_id"]) == set(direct) and (ok["replica_id"] == ok["request"].map(
        lambda i: list(direct)[i % 2])).all()
    one = next(iter(direct.values()))
    assert run_main("load_test_stub.py", "--target", one, one, "--patterns", "poisson", "--rates", 6,
                    "--num_requests", 4, "--out_dir", tmp_path / "bad") == 2
    assert "every replica's own address" in capsys.readouterr().err


def test_load_test_against_the_service(service, tmp_path):
    """Poisson and a closed-loop burst over HTTP: sim and http rows, fidelity vs the simulator set up like the
    service, every request accounted for."""
    out = tmp_path / "lt"
    assert run_main("load_test_stub.py", "--target", service["url"], "--patterns", "poisson", "burst", "--rates", 6,
                    "--conc", 4, "--num_requests", 16, "--wbits", 16, "--format", "jpeg", "--out_dir", out) == 0
    res = read_csv(out / "mixdq_queue_results.csv")
    assert list(res.columns) == RESULT_COLUMNS and set(res["source"]) == {"sim", "http"} and len(res) == 4
    assert set(res["policy"]) == {"static+admission"} and set(res["replicas"]) == {2} and set(res["max_batch"]) == {4}
    http = res[res["source"] == "http"]
    assert (http["n_done"] + http["n_rejected"] + http["n_error"] + http["n_timeout"] == 16).all()
    assert (http["n_done"] > 0).all() and (http["p50_ms"] > 0).all()
    fid = read_csv(out / "mixdq_queue_fidelity_http.csv")
    assert len(fid) == 2 and set(fid["live_model"]) == {"float32"} and fid["p95_err_pct"].notna().all()
    req = read_csv(out / "mixdq_queue_requests.csv")
    hreq = req[req["source"] == "http"]
    assert len(hreq) == 32 and set(hreq["outcome"]) <= set(client.OUTCOMES)
    ok = hreq[hreq["outcome"] == "ok"]
    assert (ok["status"] == 200).all() and (ok["overhead_ms"] > 0).all() and set(ok["res"]) == {64}
    assert set(hreq["format"]) == {"jpeg"} and (ok["bytes"] > 0).all()
    assert_latency_adds_up(ok)
    split = read_csv(out / "mixdq_queue_http_split.csv")  # per run: the means add up to the mean latency
    assert list(split["run_id"]) == list(http["run_id"]) and list(split["n_ok"]) == list(http["n_done"])
    parts = split[[f"mean_{c.removeprefix('server_')}" for c in client.SPLIT_PARTS]].sum(axis=1)
    assert np.allclose(parts, split["mean_latency_ms"], atol=0.01) and set(split["format"]) == {"jpeg"}
    assert (split["p50_overhead_ms"] > 0).all() and (split["mean_encode_ms"] >= 0).all()
    assert json.loads((out / "perf_model_server.json").read_text())["gpu"].startswith("cpu")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["service"]["serve"]["replicas"] == 2 and "perf_model" not in cfg["service"]
    report = (out / "mixdq_queue_results.txt").read_text()
    assert "HTTP accounting" in report and "HTTP latency split" in report
    meta = read_provenance(out / "mixdq_queue_results.csv")  # what was measured: the service's weights and models
    assert "random-tiny weights" in meta["service"] and "fp16" in meta["service"] and meta["format"] == "jpeg"
    assert meta["weights"] == "random-tiny (service)" and meta["backend"].startswith("fp16=") and "(service)" in meta["backend"]
    assert float(meta["transport_ms"].split()[0]) > 0  # probed before the runs, added to the sim rows
    assert float(meta["encode_ms"]) >= 0 and cfg["format"] == "jpeg"
    assert float(meta["handoff_ms"].split()[0]) > 0 and cfg["handoff_ms"] > 0  # the replica's handling, probed
    assert float(meta["hold_ms"].split()[0]) > 0 and cfg["hold_ms"] > 0  # JPEG encoded in the batch's thread, probed
    assert float(meta["gap_ms"].split()[0]) == pytest.approx(cfg["gap_ms"], abs=0.006) and cfg["gap_ms"] >= 0  # probed
    assert run_main("plot_mixdq_queue_results.py", out / "mixdq_queue_results.csv") == 0  # the split as a figure too
    assert (out / "plots" / "http_split.png").stat().st_size > 0


def assert_latency_adds_up(ok):
    """Every served request: client latency = queue + service + encode + replica other + transport, none of the
    replica's parts negative, an encode measured, and the transport (outside the replica) not negative either."""
    parts = ok[client.SPLIT_PARTS]
    assert parts.notna().all().all() and (parts >= -SLACK_MS).all().all() and (ok["encode_ms"] > 0).all()
    assert (ok["latency_ms"] >= ok["server_queue_ms"] + ok["service_ms"] + ok["encode_ms"] - SLACK_MS).all()
    assert np.allclose(parts.sum(axis=1), ok["latency_ms"], atol=SLACK_MS)


def scrape(url: str, name: str, label: str = "") -> float:
    """Sum of a Prometheus metric over all its series (those holding `label`, e.g. 'le="1.5"', if given)."""
    txt = httpx.get(url, timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in txt.splitlines() if ln.startswith(name + "{") and label in ln)


def test_burst_is_batched_and_admission_rejects_with_429(service, tmp_path):
    """An open-loop burst large enough (from the service's own latency model) to queue three times the SLO."""
    info = client.server_info(service["url"])
    (tmp_path / "pm.json").write_text(json.dumps(info["perf_model"]))
    batch4_ms = PerfModel.load(tmp_path / "pm.json").predict("fp16", 64, 64, 4)["total_p50_ms"]
    n = int(min(400, 2 * 4 * (3 * SLO_MS / batch4_ms + 2)))  # 2 replicas x batches of 4
    run = client.run_http(wl.burst(n), service["url"], "fp16", ["a burst"], timeout_s=120, replicas=2)
    df = run.requests
    counts = client.accounting(df, n)
    assert counts["ok"] > 0 and counts["rejected"] > 0 and counts["error"] == counts["timeout"] == 0
    rej = df[df["outcome"] == "rejected"]
    assert (rej["status"] == 429).all() and rej["reason"].str.contains("admission control").all()
    assert df.loc[df["outcome"] == "ok", "batch_size"].max() > 1
    assert set(df.loc[df["outcome"] == "ok", "batch_ahead"]) == {0, 1}  # full batches went to the device early
    assert_latency_adds_up(df[df["outcome"] == "ok"])  # PNG, batches of up to 4 sharing two encoder threads
    deadline = time.monotonic() + 30  # Prometheus: Ray exports every second here
    while True:
        # batches of more than one request = all batches - those in the histogram's first bucket (le 1.5); the
        # histogram's _sum is not used: Ray's export of it lagged its _count once (mean 0.995 for integer sizes)
        metrics = service["metrics"]
        single = scrape(metrics, "ray_mixdq_batch_size_bucket", 'le="1.5"')  # > 0: earlier tests' lone requests
        batched = scrape(metrics, "ray_mixdq_batch_size_count") - single
        ours, serves = (scrape(metrics, m) for m in ("ray_mixdq_requests_total",
                                                     "ray_serve_num_http_requests_total"))  # ours, Ray Serve's own
        if (single > 0 and batched > 0 and ours >= n and serves >= n) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert single > 0 and batched > 0, "the batch-size metric should count batches of more than one request"
    assert ours >= n and serves >= n


def test_a_killed_replica_is_replaced_and_nothing_is_lost(service):
    """ray.kill one replica under a closed-loop load: failures are recorded, the sum still matches what was sent,
    Serve starts a replacement and both replicas serve again within a bounded time."""
    import ray
    from ray import serve

    ray.init(address=service["address"], logging_level="ERROR", log_to_driver=False)
    try:
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::"))
        assert len(names) == 2
        result = {}
        load = threading.Thread(target=lambda: result.update(run=client.run_http(
            wl.closed_loop(60, 4), service["url"], "fp16", ["under fire"], timeout_s=60, replicas=2)))
        load.start()
        time.sleep(0.5)
        t_kill = time.monotonic()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        load.join(120)
        df = result["run"].requests
        counts = client.accounting(df, 60)
        failed = df[df["outcome"] != "ok"]
        assert counts["ok"] > 0 and (failed["reason"].str.len() > 0).all()
        # with half the capacity gone, admission control may turn requests away (429, `rejected`); every other failure
        # is a server error or a broken connection, never a client error
        rejected = failed["outcome"] == "rejected"
        assert (failed.loc[rejected, "status"] == 429).all()
        errors = failed.loc[~rejected, "status"]
        assert ((errors >= 500) | (errors == 0)).all()
        while time.monotonic() - t_kill < 120:
            now = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith("SERVE_REPLICA::")}
            states = serve.status().applications["mixdq"].deployments["ImageService"].replica_states
            if names[0] not in now and len(now) == 2 and states == {"RUNNING": 2}:
                break
            time.sleep(0.25)
        recovery_s = time.monotonic() - t_kill
        print(f"\nreplica kill: {counts} during the load; back to 2 healthy replicas {recovery_s:.1f} s after the kill")
        assert recovery_s < 120
        seen = {client.fetch_image(service["url"], "after", seed=i)[1]["x-replica"] for i in range(12)}
        assert names[0].rsplit("#", 1)[1] not in seen
    finally:
        ray.shutdown()


def test_ctrl_c_stops_the_service_and_leaves_no_process(service):
    import psutil

    proc = service["proc"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # Ray's GCS, raylet, the Serve controller, proxy and replicas
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0
    assert "stopped" in service["log"].read_text()
    gone, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, f"left behind: {[p.pid for p in alive]}"


def test_bench_encode_writes_every_encoding_and_content(tmp_path):
    from conftest import run_main
    from quant_utils.csvio import read_csv, read_provenance

    out = tmp_path / "enc.csv"
    # the default heap only: 'kept' would change this test process's allocator for the rest of the suite
    assert run_main("utils/bench_encode.py", "--heaps", "kept", "default", "--out", out) == 2 and not out.exists()
    assert run_main("utils/bench_encode.py", "--size", 48, "--repeats", 2, "--heaps", "default", "--device", "cpu",
                    "--out", out) == 0
    df = read_csv(out)
    assert list(df.columns) == ["heap", "encoding", "content", "encode_p50_ms", "encode_faults_p50", "body_mb", "repeats"]
    assert len(df) == 20 and set(df["content"]) == {"noise", "smooth"} and (df["encode_p50_ms"] > 0).all()
    host, dev = df[df["heap"] == "default"], df[df["heap"] == "device"]  # the service's encoders, both ways
    assert len(host) == 8 and (host["encode_faults_p50"] >= 0).all() and dev["encode_faults_p50"].isna().all()
    pngs = ("png level 0 on cpu, crc on cpu", "png level 0 on cpu, crc there too")
    assert set(dev["encoding"]) == {f"{e}{b}" for e in ("jpeg q90 on cpu (torchvision)",) + pngs
                                    for b in ("", ", batch of 4")}
    on_dev = dev[dev["encoding"].isin(pngs)].set_index("content")["body_mb"]
    pil = host[host["encoding"] == "jpeg q90"].set_index("content")["body_mb"]
    tv = dev[dev["encoding"] == "jpeg q90 on cpu (torchvision)"].set_index("content")["body_mb"]
    assert ((tv / pil).between(0.7, 1.4)).all()  # the same quality scale
    png0 = df[df["encoding"] == "png level 0"].set_index("content")["body_mb"]
    assert png0["noise"] == png0["smooth"] == pytest.approx((48 * (1 + 3 * 48) + 5 + 2 + 4 + 57) / 1e6, abs=1e-3)
    assert (on_dev == png0.reindex(on_dev.index)).all()  # the same file size as encode_png's, both CRC ways
    assert read_provenance(out)["device"].startswith("cpu: ")
