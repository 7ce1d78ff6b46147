"""The service's response bodies: an image as PNG (lossless, default) or JPEG (a smaller body, lossy).

Shared by the service (quant_utils/serving/server.py encodes) and the HTTP client (it checks that a 200's body is
an image of the format it asked for). On the host from uint8 [H, W, 3] arrays (encode_image), or, for the service's
--encode_on device, from uint8 [B, 3, H, W] tensors where they were made (encode_jpeg_on_device; png_frames_on_device
then finish_png). Encode times and body sizes at 1024 px: docs/serving.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import time
import zlib
from typing import Callable, NamedTuple

import numpy as np

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover
    resource = None


class ImageFormat(NamedTuple):
    media_type: str
    signature: bytes  # the body's first bytes


# the request's `format` -> what the response carries
IMAGE_FORMATS = {"png": ImageFormat("image/png", b"\x89PNG\r\n\x1a\n"),
                 "jpeg": ImageFormat("image/jpeg", b"\xff\xd8\xff")}


def encode_png(image: np.ndarray, level: int = 0) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes, no row filters, zlib at `level` (PIL's encoder tries five filters per row:
    10x slower at level 0, which would dominate the HTTP overhead at 1024 px). Three passes over the pixels (rows
    with their filter byte, zlib, the final join): the encode is part of every response's latency."""
    h, w, _ = image.shape
    rows = np.empty((h, 1 + w * 3), np.uint8)
    rows[:, 0] = 0  # filter type 0 (none) per row
    rows[:, 1:] = image.reshape(h, w * 3)
    idat = zlib.compress(rows, level)
    ihdr = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    return b"".join([b"\x89PNG\r\n\x1a\n", (13).to_bytes(4, "big"), ihdr, zlib.crc32(ihdr).to_bytes(4, "big"),
                     len(idat).to_bytes(4, "big"), b"IDAT", idat, zlib.crc32(idat, zlib.crc32(b"IDAT")).to_bytes(4, "big"),
                     (0).to_bytes(4, "big"), b"IEND", zlib.crc32(b"IEND").to_bytes(4, "big")])


def encode_image(image: np.ndarray, fmt: str, png_level: int = 0, jpeg_quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> the body of a `fmt` response (one of IMAGE_FORMATS)."""
    if fmt == "png":
        return encode_png(image, png_level)
    if fmt != "jpeg":
        raise ValueError(f"format {fmt!r}: expected one of {list(IMAGE_FORMATS)}")
    from PIL import Image

    buf = io.BytesIO()
    # Pillow's libjpeg(-turbo), 4:2:0 chroma: 3-10x smaller than PNG level 0 for a few ms more at 1024 px
    Image.fromarray(image).save(buf, "JPEG", quality=jpeg_quality)
    return buf.getvalue()


def _check_batch(images) -> None:
    """The device encoders' input: a uint8 torch batch [B, 3, H, W] (ValueError naming what came instead)."""
    import torch

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")


def encode_jpeg_on_device(images, quality: int = 90) -> list[bytes]:
    """uint8 torch [B, 3, H, W] -> one JPEG body per image, encoded where the tensor lives: nvJPEG on CUDA (one
    batched call; only the compressed bytes cross to the host, not the 3 MB of pixels per 1024 px image), libjpeg on
    the CPU. torchvision's encoder: deprecated since torchvision 0.29 in favour of TorchCodec, which the GPU machines
    lack; its quality scale is libjpeg's, as Pillow's."""
    import warnings

    _check_batch(images)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated since torchvision")  # once per call otherwise
        from torchvision.io import encode_jpeg

        out = encode_jpeg(list(images), quality=quality)
    return [o.cpu().numpy().tobytes() for o in out]


_STORED_MAX = 65535  # bytes per stored deflate block


def png_frames_on_device(images) -> np.ndarray:
    """uint8 torch [B, 3, H, W] -> uint8 [B, N] on the host: per image the whole level-0 PNG file (what encode_png
    writes, up to zlib's choice of block boundaries) but the IDAT chunk's CRC-32, left zero for `finish_png`. The
    pixel work is done where the tensor lives (on a GPU: rows with their filter bytes, zlib's stored-block framing and
    its Adler-32), so the host gets the file in the one copy it needed anyway, and the CPU is left the CRC and the copy
    into the body: two passes over 3 MB at 1024 px instead of encode_png's five."""
    import torch

    _check_batch(images)
    b, _, h, w = images.shape
    dev = images.device
    n = h * (1 + 3 * w)  # the rows, each with its filter byte (0: none)
    rows = torch.zeros((b, h, 1 + 3 * w), dtype=torch.uint8, device=dev)
    rows[:, :, 1:] = images.permute(0, 2, 3, 1).reshape(b, h, 3 * w)
    raw = rows.view(b, n)
    nblk = -(-n // _STORED_MAX)
    last = n - (nblk - 1) * _STORED_MAX  # bytes in the final block
    heads = [bytes([0, 0xFF, 0xFF, 0, 0])] * (nblk - 1) + [bytes([1]) + last.to_bytes(2, "little")
                                                         + (0xFFFF - last).to_bytes(2, "little")]  # BFINAL, LEN, NLEN
    heads = torch.frombuffer(bytearray(b"".join(heads)), dtype=torch.uint8).view(1, nblk, 5).to(dev)
    padded = torch.nn.functional.pad(raw, (0, nblk * _STORED_MAX - n)).view(b, nblk, _STORED_MAX)
    blocks = torch.cat([heads.expand(b, -1, -1), padded], 2).view(b, -1)[:, :n + 5 * nblk]
    d = raw.to(torch.int64)  # Adler-32 as two sums; the weighted one stays below 2^63 for n < 2.6e8 (255 n^2 / 2)
    adler = ((n + (d * torch.arange(n, 0, -1, device=dev)).sum(1)) % 65521) << 16 | (1 + d.sum(1)) % 65521
    adler = torch.stack([(adler >> s) & 255 for s in (24, 16, 8, 0)], 1).to(torch.uint8)
    zlen = 2 + blocks.shape[1] + 4
    ihdr = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    head = (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
            + zlen.to_bytes(4, "big") + b"IDAT" + b"\x78\x01")  # zlib header: deflate, 32K window, no dictionary
    tail = bytes(4) + (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")  # CRC to fill
    const = lambda x: torch.frombuffer(bytearray(x), dtype=torch.uint8).to(dev).expand(b, -1)  # noqa: E731
    return torch.cat([const(head), blocks, adler, const(tail)], 1).cpu().numpy()


class FramedPng(NamedTuple):
    frame: np.ndarray  # a png_frames_on_device row: the PNG file but its IDAT CRC


def finish_png(frame: np.ndarray) -> bytes:
    """A png_frames_on_device row -> the PNG body: its IDAT CRC-32 computed (over "IDAT" and the zlib stream)."""
    crc = zlib.crc32(frame[37:-16])  # 8 signature + 25 IHDR chunk + 4 length: "IDAT" starts at 37
    frame[-16:-12] = np.frombuffer(crc.to_bytes(4, "big"), np.uint8)
    return frame.tobytes()


class EncodeTiming(NamedTuple):
    body: bytes
    ms: float       # the encode's wall time, in the thread that encoded
    faults: float   # minor page faults of that thread during it (nan where the OS does not count them per thread)


def _thread_faults() -> float:
    who = getattr(resource, "RUSAGE_THREAD", None) if resource is not None else None  # Linux only
    return float(resource.getrusage(who).ru_minflt) if who is not None else math.nan


def timed(encode: Callable[..., bytes], *args) -> EncodeTiming:
    """encode(*args) with its wall time and the page faults it took, in the thread that runs it."""
    f, t = _thread_faults(), time.perf_counter()
    body = encode(*args)
    return EncodeTiming(body, (time.perf_counter() - t) * 1e3, _thread_faults() - f)


def encode_image_timed(image: np.ndarray, fmt: str, png_level: int = 0, jpeg_quality: int = 90) -> EncodeTiming:
    """encode_image with its own wall time and page faults, taken in the thread that encodes: the service reports
    them beside the time a request waited for its encode (x-encode-work-ms, x-encode-faults vs x-encode-ms), to tell
    a slow encoder from a slow hand-off, and an encoder that computes from one that faults in fresh pages (each of
    the PNG's ~3 MB buffers at 1024 px is ~770 pages: 2,340 faults and 5.6 ms per encode against 0 and 1.6 ms with
    the pages reused, on the 2-core CPU machine)."""
    return timed(encode_image, image, fmt, png_level, jpeg_quality)


def keep_freed_heap(mb: int = 256) -> bool:
    """Ask glibc to serve multi-MB allocations from the heap and keep freed ones there (mallopt: mmap threshold 64
    MiB, trim threshold `mb` MiB), so that every response's encode buffers reuse pages instead of faulting in fresh
    ones. False where the C library has no mallopt (not glibc); the process's memory then stays as it was."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, mb << 20))


def is_image(body: bytes, fmt: str) -> bool:
    """Whether `body` starts like a `fmt` image (the client's check of a 200 response)."""
    return body.startswith(IMAGE_FORMATS[fmt].signature)
