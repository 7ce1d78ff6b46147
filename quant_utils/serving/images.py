"""The service's response bodies: an image as PNG (lossless, default) or JPEG (a smaller body, lossy).

Shared by the service (quant_utils/serving/server.py encodes) and the HTTP client (it checks that a 200's body is
an image of the format it asked for). Encode times and body sizes at 1024 px: docs/serving.md.
"""
from __future__ import annotations

import io
import time
import zlib
from typing import NamedTuple

import numpy as np


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


def encode_image_timed(image: np.ndarray, fmt: str, png_level: int = 0, jpeg_quality: int = 90) -> tuple[bytes, float]:
    """encode_image and its own wall time in ms, taken in the thread that encodes: the service reports it beside the
    time a request waited for its encode (x-encode-work-ms vs x-encode-ms), to tell a slow encoder from a slow hand-off."""
    t = time.perf_counter()
    body = encode_image(image, fmt, png_level, jpeg_quality)
    return body, (time.perf_counter() - t) * 1e3


def is_image(body: bytes, fmt: str) -> bool:
    """Whether `body` starts like a `fmt` image (the client's check of a 200 response)."""
    return body.startswith(IMAGE_FORMATS[fmt].signature)
