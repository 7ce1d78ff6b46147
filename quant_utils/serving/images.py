"""The service's response bodies: an image as PNG (lossless, default) or JPEG (a smaller body, lossy).

Shared by the service (quant_utils/serving/server.py encodes) and the HTTP client (it checks that a 200's body is
an image of the format it asked for). Encode times and body sizes at 1024 px: docs/serving.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import time
import zlib
from typing import NamedTuple

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


def encode_jpeg_on_device(images, quality: int = 90) -> list[bytes]:
    """uint8 torch [B, 3, H, W] -> one JPEG body per image, encoded where the tensor lives: nvJPEG on CUDA (one
    batched call; only the compressed bytes cross to the host, not the 3 MB of pixels per 1024 px image), libjpeg on
    the CPU. torchvision's encoder: deprecated since torchvision 0.29 in favour of TorchCodec, which the GPU machines
    lack; its quality scale is libjpeg's, as Pillow's."""
    import warnings

    if images.dtype.is_floating_point or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated since torchvision")  # once per call otherwise
        from torchvision.io import encode_jpeg

        out = encode_jpeg(list(images), quality=quality)
    return [o.cpu().numpy().tobytes() for o in out]


class EncodeTiming(NamedTuple):
    body: bytes
    ms: float       # the encode's wall time, in the thread that encoded
    faults: float   # minor page faults of that thread during it (nan where the OS does not count them per thread)


def _thread_faults() -> float:
    who = getattr(resource, "RUSAGE_THREAD", None) if resource is not None else None  # Linux only
    return float(resource.getrusage(who).ru_minflt) if who is not None else math.nan


def encode_image_timed(image: np.ndarray, fmt: str, png_level: int = 0, jpeg_quality: int = 90) -> EncodeTiming:
    """encode_image with its own wall time and page faults, taken in the thread that encodes: the service reports
    them beside the time a request waited for its encode (x-encode-work-ms, x-encode-faults vs x-encode-ms), to tell
    a slow encoder from a slow hand-off, and an encoder that computes from one that faults in fresh pages (each of
    the PNG's ~3 MB buffers at 1024 px is ~770 pages: 2,340 faults and 5.6 ms per encode against 0 and 1.6 ms with
    the pages reused, on the 2-core CPU machine)."""
    f, t = _thread_faults(), time.perf_counter()
    body = encode_image(image, fmt, png_level, jpeg_quality)
    return EncodeTiming(body, (time.perf_counter() - t) * 1e3, _thread_faults() - f)


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
