"""Quantized model folders: a MixDQ UNet as packed integers in safetensors, loaded without the FP16 UNet.

A folder holds `config.json` (format version, the UNet's architecture config, the quantization spec, each
layer's storage format) and `diffusion_pytorch_model.safetensors` (packed 2/4/6/8-bit weights exactly as
quant_utils/kernels/packing.py lays them out, per-channel scales, activation ranges and zero points, and every
tensor that stays floating point). docs/quantized_format.md describes the format.

`save_quantized(unet, folder)` writes it from a quantized, calibrated UNet (before set_backend('kernel'), which
frees the integer weights). `load_quantized(folder, device)` builds the UNet on the meta device from the
config, swaps in QuantLayers (no FP weight data is ever allocated) and fills them from the file:
- `fake` backend: each layer keeps its int8 codes (unpacked once at load) and dequantizes them on first use,
  exactly as a freshly quantized layer does, so images are bit-identical to the run that saved the folder;
- `kernel` backend (CUDA): the packed bytes go into the kernels' state as they are (no re-packing); the codes
  are unpacked on the GPU only for the epilogue's column sums, then freed.
No pickle is read (safetensors and JSON only), no calibration runs, no FP16 UNet weight is touched.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .csvio import atomic_folder
from .errors import ConfigError
from .kernels import packing
from .qlayers import Backend, QuantLayer
from .quantize import (
    QuantSpec,
    bit_summary,
    quant_layers,
    quantizable_layers,
    quantize_unet,
    refuse_fused,
    set_backend,
)

FORMAT = "mixdq-quantized-unet"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# --------------------------------------------------------------------------- layer records
def pack_split(layer: QuantLayer) -> int | None:
    """The input-channel split the packed weight is cut at: the layer's split when it quantizes its input in two
    parts (as kernels.backend packs it), else none."""
    return layer.split if layer.act_quant2 is not None else None


def _layer_record(layer: QuantLayer, shape: tuple[int, ...]) -> dict:
    rec = {"kind": layer.kind, "shape": list(shape), "w_bits": layer.w_bits, "a_bits": layer.a_bits,
           "split": layer.split, "bos": bool(layer.bos), "bias": layer.bias is not None}
    if layer.w_bits is not None:
        fmt = packed_format(layer.w_bits, shape, pack_split(layer))
        rec.update(storage_bits=fmt.bits, group=fmt.group, seg_k=list(fmt.seg_k), pack_split=pack_split(layer))
    return rec


def packed_format(w_bits: int, shape: tuple[int, ...], split: int | None) -> packing.PackedFormat:
    """The PackedFormat packing.pack_weight gives a weight of this shape (computed without packing anything)."""
    bits = packing.storage_bits(w_bits)
    taps = 1 if len(shape) == 2 else shape[2] * shape[3]
    segs = [shape[1]] if split is None else [split, shape[1] - split]
    group = packing.group_size(bits, segs)
    return packing.PackedFormat(bits, group, tuple(taps * packing.round_up(c, group) for c in segs))


def _expected_layer_tensors(name: str, rec: dict, fp_dtype: torch.dtype) -> dict[str, tuple[tuple, torch.dtype]]:
    """Tensor name -> (shape, dtype) a layer record implies."""
    n = rec["shape"][0]
    out: dict[str, tuple[tuple, torch.dtype]] = {}
    if rec["w_bits"] is None:
        out[f"{name}.weight"] = (tuple(rec["shape"]), fp_dtype)
    else:
        fmt = packing.PackedFormat(rec["storage_bits"], rec["group"], tuple(rec["seg_k"]))
        out[f"{name}.weight_packed"] = ((n, fmt.row_bytes), torch.int8 if fmt.bits == 8 else torch.uint8)
        out[f"{name}.w_scale"] = ((n,), torch.float32)
        out[f"{name}.w_zero_point"] = ((n,), torch.float32)
    if rec["bias"]:
        out[f"{name}.bias"] = ((n,), fp_dtype)
    if rec["a_bits"] is not None:
        for q in ("act_quant", "act_quant2") if rec["split"] else ("act_quant",):
            out[f"{name}.{q}.scale"] = ((), torch.float32)
            out[f"{name}.{q}.zero_point"] = ((), torch.float32)
    return out


# --------------------------------------------------------------------------- save
@torch.no_grad()
def save_quantized(unet: nn.Module, folder: str | Path, created: dict | None = None) -> Path:
    """Write `unet` (quantized by quantize_unet, activations calibrated, not yet on the kernel backend) as a
    quantized folder; `created` (model name, weights, calibration...) is recorded in config.json as is.

    The folder is written next to its final place and renamed into it, so a failure leaves nothing half-written;
    an existing quantized folder there is replaced, any other non-empty path is an error."""
    from safetensors.torch import save_file

    refuse_fused(unet, "save")
    spec: QuantSpec | None = getattr(unet, "mixdq_spec", None)
    if spec is None:
        raise ValueError("save_quantized needs a UNet quantized by quantize_unet")
    folder = Path(folder)
    _check_target(folder)
    layers, fp_tensors, q_tensors, owned = {}, {}, {}, set()
    for name, m in quant_layers(unet):
        owned.update(f"{name}.{k}" for k in m.state_dict())
        if m.kernel_state is not None:
            raise ValueError(f"layer {name}: prepared for the kernel backend (integer weights and biases freed); "
                             "save the UNet before set_backend('kernel')")
        shape = tuple((m.w_int if m.w_bits is not None else m.weight).shape)
        layers[name] = _layer_record(m, shape)
        if m.w_bits is None:
            fp_tensors[f"{name}.weight"] = m.weight
        else:
            packed, _ = packing.pack_weight(m.w_int, packing.storage_bits(m.w_bits), pack_split(m))
            q_tensors[f"{name}.weight_packed"] = packed
            q_tensors[f"{name}.w_scale"] = m.w_scale.float()
            q_tensors[f"{name}.w_zero_point"] = m.w_zero_point.float()
        if m.bias is not None:
            fp_tensors[f"{name}.bias"] = m.bias
        for key, q in (("act_quant", m.act_quant), ("act_quant2", m.act_quant2)):
            if q is not None:
                if not q.calibrated:
                    raise ValueError(f"layer {name}: activation quantizer not calibrated; calibrate before saving")
                q_tensors[f"{name}.{key}.scale"] = q.scale.float()
                q_tensors[f"{name}.{key}.zero_point"] = q.zero_point.float()
    fp_tensors.update((k, t) for k, t in unet.state_dict().items() if k not in owned)
    fp_dtype = next((t.dtype for t in fp_tensors.values() if t.is_floating_point()), torch.float32)
    tensors = {k: t.to(fp_dtype) if t.is_floating_point() else t for k, t in fp_tensors.items()}  # one FP dtype
    tensors.update(q_tensors)
    config = {
        "format": FORMAT, "format_version": VERSION,
        "unet_class": type(unet).__name__,
        "unet_config": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        "dtype": str(fp_dtype).removeprefix("torch."),
        "quantization": spec.to_dict(),
        "sources": dict(spec.sources),
        "layers": layers,
        "summary": {k: v for k, v in bit_summary(unet).items() if k != "layers_per_wbits"},
        "created": created or {},
    }
    with atomic_folder(folder) as tmp:
        save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": FORMAT, "format_version": str(VERSION)})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
    return folder


def _is_quantized_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(folder: Path) -> None:
    """Only an absent path, an empty folder or an earlier quantized folder may be written (never, say, a UNet's)."""
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not _is_quantized_folder(folder))):
        raise ConfigError(f"{folder} exists and is not a quantized model folder: choose another path to save into")


# --------------------------------------------------------------------------- load
def read_config(folder: str | Path) -> dict:
    """A quantized folder's config.json, checked for format and version; errors say what the folder is."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"quantized model folder {folder} does not exist (write one with "
                          "scripts/quant_txt2img.py --save_quantized DIR)")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {CONFIG_FILE}: not a quantized model folder")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): the folder is damaged; write it again") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ConfigError(f"{path}: format {got!r}, expected {FORMAT!r}: not a quantized model folder")
    check_version(cfg.get("format_version"), path)
    missing = [k for k in ("unet_class", "unet_config", "dtype", "quantization", "layers") if k not in cfg]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}: the folder is damaged; write it again")
    if cfg["dtype"] not in _DTYPES:
        raise ConfigError(f"{path}: dtype {cfg['dtype']!r}, expected one of {sorted(_DTYPES)}")
    return cfg


def check_version(version, where) -> None:
    """This code reads format version VERSION only: other versions are refused, never guessed at."""
    if version == VERSION:
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ConfigError(f"{where}: quantized format version {version} was written by newer code; this code reads "
                          f"version {VERSION} only: update the code (git pull)")
    raise ConfigError(f"{where}: quantized format version {version!r} is not readable by this code (it reads version "
                      f"{VERSION} only): write the folder again with scripts/quant_txt2img.py --save_quantized")


def check_architecture(cfg: dict, arch: dict, where: str | Path) -> None:
    """The folder's UNet must be the model config's architecture (text encoder widths, channels, blocks)."""
    saved = json.loads(json.dumps(cfg["unet_config"]))
    diff = sorted(k for k in set(saved) & set(arch) if not k.startswith("_") and saved[k] != arch[k])
    if diff:
        k = diff[0]
        raise ConfigError(f"{where} holds a UNet of another architecture than this model config: {k} is {saved[k]} "
                          f"there, {arch[k]} here ({len(diff)} key(s) differ); pass the --config it was made with "
                          f"({cfg.get('model', 'see its config.json')})")


def _spec_from_config(cfg: dict, where: Path) -> QuantSpec:
    q = cfg["quantization"]
    try:
        return QuantSpec(weight_bits=dict(q["weight_bits"]), act_bits=dict(q["act_bits"]),
                         act_protect=tuple(q["act_protect"]), w_symmetric=q["w_symmetric"], w_method=q["w_method"],
                         a_method=q["a_method"], bos=q["bos"], split=q["split"], sources=cfg.get("sources", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad 'quantization' entry ({type(e).__name__}: {e})") from e


def _names(names, k: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (f" ... ({len(names)} in all)" if len(names) > k else "")


def build_skeleton(cfg: dict, where: Path) -> nn.Module:
    """The folder's UNet on the meta device with QuantLayers swapped in: structure only, no memory, no weights."""
    from diffusers import UNet2DConditionModel

    if cfg["unet_class"] != "UNet2DConditionModel":
        raise ConfigError(f"{where}: UNet class {cfg['unet_class']!r}, expected 'UNet2DConditionModel'")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet_config"])
    spec = _spec_from_config(cfg, where)
    layers = set(quantizable_layers(unet))
    for what, names in (("weight bits", spec.weight_bits), ("layer records", cfg["layers"])):
        if set(names) != layers:
            raise ConfigError(f"{where}: {what} do not match the UNet's layers: unknown {_names(set(names) - layers)}; "
                              f"missing {_names(layers - set(names))}")
    with torch.device("meta"):
        quantize_unet(unet, spec, search=False)
    for name, m in quant_layers(unet):  # the saver's layer settings must be the ones this code derives
        rec = cfg["layers"][name]
        shape = tuple((m.w_int if m.w_bits is not None else m.weight).shape)
        want = _layer_record(m, shape)
        bad = sorted(k for k in want if rec.get(k) != want[k])
        if bad:
            raise ConfigError(f"{where}: layer {name}: {bad[0]} is {rec.get(bad[0])!r} in the file, "
                              f"{want[bad[0]]!r} for this UNet: the folder does not fit this code")
    return unet


@torch.no_grad()
def load_quantized(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   backend: str = "fake") -> nn.Module:
    """The quantized UNet of `folder` on `device` (floating tensors in `dtype`, default the file's), ready to run
    with `backend` ('kernel' needs CUDA and falls back to 'fake' elsewhere, as set_backend does)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    cfg = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ConfigError(f"{folder} has no {WEIGHTS_FILE}: the folder is incomplete; write it again")
    device = torch.device(device)
    file_dtype = _DTYPES[cfg["dtype"]]
    dtype = dtype or file_dtype
    unet = build_skeleton(cfg, folder)
    layers = dict(quant_layers(unet))
    expected: dict[str, tuple[tuple, torch.dtype]] = {}
    owned = set()
    for name, m in layers.items():
        owned.update(f"{name}.{k}" for k in m.state_dict())
        expected.update(_expected_layer_tensors(name, cfg["layers"][name], file_dtype))
    others = {k: t for k, t in unet.state_dict().items() if k not in owned}  # norms, embeddings...: meta tensors
    expected.update((k, (tuple(t.shape), file_dtype if t.is_floating_point() else t.dtype)) for k, t in others.items())
    try:
        f = safe_open(str(weights), framework="pt", device=str(device))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights} cannot be read ({type(e).__name__}: {str(e)[:200]}): the file is damaged or "
                          "truncated; write the folder again") from e
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{weights}: not a {FORMAT} file (metadata format {meta.get('format')!r})")
        version = meta.get("format_version", "")
        check_version(int(version) if version.isdigit() else version, weights)
        keys = set(f.keys())
        missing, unknown = set(expected) - keys, keys - set(expected)
        if missing or unknown:
            problems = ([f"missing tensor(s) {_names(missing)}"] if missing else []) + (
                [f"unknown tensor(s) {_names(unknown)}"] if unknown else [])
            raise ConfigError(f"{weights} does not match its {CONFIG_FILE}: " + "; ".join(problems))
        for key, (shape, dt) in expected.items():
            sl = f.get_slice(key)
            got = (tuple(sl.get_shape()), sl.get_dtype())
            if got != (shape, _ST_DTYPES.get(dt)):
                raise ConfigError(f"{weights}: tensor {key} is {got[1]} {list(got[0])}, expected "
                                  f"{_ST_DTYPES.get(dt)} {list(shape)}")

        fp_keys = {k for k in expected if k in others or k.endswith((".weight", ".bias"))}  # not quantizer params

        def get(key: str) -> torch.Tensor:
            t = f.get_tensor(key)
            return t.to(dtype) if key in fp_keys and t.is_floating_point() else t

        unet.load_state_dict({k: get(k) for k in others}, strict=False, assign=True)
        kernel = Backend(backend) is Backend.KERNEL and device.type == "cuda"
        for name, m in layers.items():
            fill_layer(m, name, cfg["layers"][name], get, dtype, kernel)
    left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal: {folder}: tensor(s) left unfilled: {_names(left)}")
    set_backend(unet, backend)  # kernel: prepares the FP-weight layers (the rest are); on a CPU falls back to fake
    unet.eval()
    unet.mixdq_folder = str(folder)
    return unet


_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int8: "I8", torch.uint8: "U8",
              torch.int64: "I64", torch.int32: "I32"}


def fill_layer(m: QuantLayer, name: str, rec: dict, get, dtype: torch.dtype, kernel: bool) -> None:
    """Install one layer's tensors (`get(key)` reads one from the file, on the device, FP ones in `dtype`).
    kernel=True builds the kernels' state from the packed bytes as they are; else the layer keeps int8 codes and
    no FP weight (the fake path dequantizes them on first use)."""
    m.bias = nn.Parameter(get(f"{name}.bias"), requires_grad=False) if rec["bias"] else None
    for key, q in (("act_quant", m.act_quant), ("act_quant2", m.act_quant2)):
        if q is not None:
            q.scale = get(f"{name}.{key}.scale")
            q.zero_point = get(f"{name}.{key}.zero_point")
            q.calibrated = True
    if m.w_bits is None:
        m.weight = nn.Parameter(get(f"{name}.weight"), requires_grad=False)
        return
    m.w_scale = get(f"{name}.w_scale")
    m.w_zero_point = get(f"{name}.w_zero_point")
    fmt = packing.PackedFormat(rec["storage_bits"], rec["group"], tuple(rec["seg_k"]))
    packed = get(f"{name}.weight_packed")
    m.w_int = packing.unpack_weight(packed, fmt, tuple(rec["shape"]), rec["pack_split"])  # on the device
    if kernel:
        m.weight = None
        m.prepare_kernels(packed=(packed, fmt))  # the bytes as they are; frees the codes after the column sums
    else:
        m.drop_fp_weight(dtype)
