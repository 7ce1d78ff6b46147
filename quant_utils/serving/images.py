"""The service's response bodies: an image as PNG (lossless, default) or JPEG (a smaller body, lossy).

Shared by the service (quant_utils/serving/server.py encodes) and the HTTP client (it checks that a 200's body is
an image of the format it asked for). On the host from uint8 [H, W, 3] arrays (encode_image), or, for the service's
--encode_on device, from uint8 [B, 3, H, W] tensors where they were made (encode_jpeg_on_device, encode_png_on_device:
the whole file, its CRC-32 by crc32_on_device or, the service's way, on the host: PngOnHost). Encode times and body
sizes at 1024 px: docs/serving.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import itertools
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
_CRC_CHUNK = 64  # bytes per chunk of crc32_on_device
_CRC_LEVELS = 40  # tree levels of shift matrices: up to 2^40 chunks, beyond any body


def _crc_bits(x: int) -> list[int]:
    return [(x >> t) & 1 for t in range(32)]


@functools.lru_cache(maxsize=None)
def _crc32_matrices() -> tuple[np.ndarray, np.ndarray]:
    """zlib's CRC-32 without its initial and final xor is linear over GF(2) in the data and the state. Returns
    `planes` [8, 64, 32]: the state after a 64-byte chunk holding only bit j at byte i (from zlib itself), and
    `shifts` [_CRC_LEVELS, 32, 32]: the state maps for appending 64 * 2^k zero bytes (row t: the image of state bit t)."""
    zero = zlib.crc32(bytes(_CRC_CHUNK))
    planes = np.zeros((8, _CRC_CHUNK, 32), np.float32)
    for j, i in itertools.product(range(8), range(_CRC_CHUNK)):
        chunk = bytearray(_CRC_CHUNK)
        chunk[i] = 1 << j
        planes[j, i] = _crc_bits(zlib.crc32(chunk) ^ zero)
    table = []  # the reflected polynomial's byte table, as zlib's
    for v in range(256):
        for _ in range(8):
            v = (v >> 1) ^ (0xEDB88320 if v & 1 else 0)
        table.append(v)
    step = np.array([_crc_bits((1 << t) >> 8 ^ table[(1 << t) & 0xFF]) for t in range(32)], np.int64)  # one 0 byte
    for _ in range(6):  # 2^6 = 64 zero bytes
        step = step @ step % 2
    shifts = []
    for _ in range(_CRC_LEVELS):
        shifts.append(step.astype(np.float32))
        step = step @ step % 2
    return planes, np.stack(shifts)


@functools.lru_cache(maxsize=None)
def _crc32_matrices_on(device: str):
    import torch

    return tuple(torch.from_numpy(m).to(device) for m in _crc32_matrices())


@functools.lru_cache(maxsize=8)
def _crc32_of_zeros(n: int) -> int:
    return zlib.crc32(bytes(n))


def crc32_on_device(data):
    """uint8 torch [B, n] -> int64 [B]: zlib.crc32 of each row, computed where the tensor lives (by zlib on the CPU,
    else by _crc32_gf2)."""
    import torch

    if data.dtype != torch.uint8 or data.dim() != 2:
        raise ValueError(f"expected uint8 [B, n], got {data.dtype} {tuple(data.shape)}")
    if data.device.type == "cpu":
        return torch.tensor([zlib.crc32(row.numpy()) for row in data.contiguous()], dtype=torch.int64)
    return _crc32_gf2(data)


def _crc32_gf2(data):
    """crc32_on_device in tensor ops, for any device (one pass of matmuls, no per-byte loop). The CRC (without
    zlib's initial and final xor) is linear over GF(2): each 64-byte chunk's state is a product of its bit planes with
    constant matrices; chunk states combine pairwise up a tree (the left one shifted by the right one's length, a
    32x32 matrix per level), after zero chunks in front (which change nothing) make their count a power of two; the
    xors come back as the CRC of n zero bytes. Sums stay <= 64, exact in any float matmul (TF32 included)."""
    import torch

    b, n = data.shape
    chunks = max(-(-n // _CRC_CHUNK), 1)
    levels = (chunks - 1).bit_length()
    planes, shifts = _crc32_matrices_on(str(data.device))
    x = torch.nn.functional.pad(data, ((1 << levels) * _CRC_CHUNK - n, 0)).view(b, 1 << levels, _CRC_CHUNK)
    state = sum(((x >> j) & 1).float() @ planes[j] for j in range(8)) % 2  # [B, chunks, 32]
    for k in range(levels):
        pairs = state.view(b, -1, 2, 32)
        state = (pairs[:, :, 0] @ shifts[k] + pairs[:, :, 1]) % 2
    weights = torch.tensor([1 << t for t in range(32)], dtype=torch.int64, device=data.device)
    return (state.view(b, 32).to(torch.int64) * weights).sum(1) ^ _crc32_of_zeros(n)


def encode_png_on_device(images, crc_on_device: bool = True) -> np.ndarray:
    """uint8 torch [B, 3, H, W] -> uint8 [B, N] on the host: per image the whole level-0 PNG file (what encode_png
    writes, up to zlib's choice of block boundaries), made where the tensor lives (on a GPU: rows with their filter
    bytes, zlib's stored-block framing, its Adler-32 and, with `crc_on_device`, the IDAT chunk's CRC-32), so the host
    gets the file in the one copy it needed anyway. Without `crc_on_device` the CRC's 4 bytes are left 0 for
    PngOnHost.body to fill on the host (the service's way: measured, the GPU's CRC cost more device time per batch
    than zlib's on an encoder thread, which overlaps the next batch; docs/serving.md)."""
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
    zlen = 2 + blocks.shape[1] + 4
    ihdr = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    const = lambda x: torch.frombuffer(bytearray(x), dtype=torch.uint8).to(dev).expand(b, -1)  # noqa: E731
    be32 = lambda v: torch.stack([(v >> s) & 255 for s in (24, 16, 8, 0)], 1).to(torch.uint8)  # noqa: E731
    # the IDAT chunk's type and data ("IDAT", the zlib header: deflate, 32K window, no dictionary; blocks; Adler-32)
    idat = torch.cat([const(b"IDAT\x78\x01"), blocks, be32(adler)], 1)
    head = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + zlen.to_bytes(4, "big")
    tail = (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")
    crc = crc32_on_device(idat) if crc_on_device else torch.zeros(b, dtype=torch.int64, device=dev)
    return torch.cat([const(head), idat, be32(crc), const(tail)], 1).cpu().numpy()


_PNG_IDAT_TYPE = 37  # offset of "IDAT" in encode_png_on_device's files: signature 8, IHDR chunk 25, IDAT length 4
_PNG_TAIL = 16  # the IDAT CRC (4) and the IEND chunk (12)


class PngOnHost(NamedTuple):
    file: np.ndarray  # an encode_png_on_device(..., crc_on_device=False) row: the PNG file but its IDAT CRC-32

    def body(self) -> bytes:
        """The response body: the IDAT CRC-32 by zlib written into the file, then the one copy into bytes."""
        end = len(self.file) - _PNG_TAIL
        crc = zlib.crc32(self.file[_PNG_IDAT_TYPE:end])
        self.file[end:end + 4] = np.frombuffer(crc.to_bytes(4, "big"), np.uint8)
        return bytes(self.file)


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
