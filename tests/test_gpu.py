"""GPU paths, checked the moment a GPU is there (`make gpu-check`; skipped without CUDA): a training
step on CUDA equals the CPU step, faiss-gpu (or torch top-k) k-NN equals exact CPU search, the
bf16 backbone gives finite features close to fp32, `device: auto` picks CUDA, and a
sliding-window evaluation on CUDA equals the CPU one, and batches streamed through pinned memory or
resident on the GPU are the CPU's."""

import numpy as np
import pytest
import torch

from pipeline.eigenfunctions import Psi, neuralef_objective
from pipeline.graph.batch import build_kernel, knn_cosine
from pipeline.runtime import resolve_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def _step(device: torch.device, seed: int = 0):
    """One Adam step of psi on a batch kernel, with a deterministic training output (column-
    normalised softmax; the Gumbel noise is drawn differently on each device)."""
    torch.manual_seed(seed)
    psi = Psi(64, 16, depth=2, heads=2, dim_head=16).to(device)
    gen = torch.Generator().manual_seed(seed)
    high, inp, pixels = (
        torch.randn(4, 100, 32, generator=gen),
        torch.randn(4, 100, 64, generator=gen),
        torch.rand(4, 100, 5, generator=gen),
    )
    kernel = build_kernel(high.to(device), pixels.to(device), k=16)
    optimiser = torch.optim.Adam(psi.parameters(), lr=1e-3)
    y = psi(inp.to(device)).reshape(400, -1).softmax(-1)
    out = y / y.norm(dim=0, keepdim=True).clamp_min(1.0)
    objective = neuralef_objective(out, kernel, beta=0.16)
    objective.loss.backward()
    optimiser.step()
    return objective.loss.item(), {k: v.detach().cpu() for k, v in psi.state_dict().items()}


def test_training_step_on_cuda_equals_the_cpu_step():
    loss_cpu, state_cpu = _step(torch.device("cpu"))
    loss_gpu, state_gpu = _step(CUDA)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4, abs=1e-7)
    for key, value in state_cpu.items():
        torch.testing.assert_close(state_gpu[key], value, rtol=1e-3, atol=1e-5)


def test_gpu_knn_equals_exact_cpu_search():
    x = torch.randn(3000, 48, generator=torch.Generator().manual_seed(0))
    vals_cpu, idx_cpu = knn_cosine(x, 32)
    vals_gpu, idx_gpu = knn_cosine(x.to(CUDA), 32)
    torch.testing.assert_close(vals_gpu.cpu(), vals_cpu, rtol=1e-4, atol=1e-4)
    same = np.mean([len(np.intersect1d(a, b)) / 32 for a, b in zip(idx_gpu.cpu().numpy(), idx_cpu.numpy())])
    assert same > 0.999


def test_device_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda"


def test_bf16_backbone_is_finite_and_close_to_fp32(tmp_path):
    from fixtures import tiny_vit_backbone, write_tiny_vit
    from pipeline.features import encode_crops

    path = write_tiny_vit(tmp_path / "vit.pth")
    backbone = tiny_vit_backbone(path)
    crops = list(torch.randint(0, 255, (2, 3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    cpu = encode_crops(backbone, crops, torch.device("cpu"))
    gpu = encode_crops(backbone, crops, CUDA)  # bf16 autocast on CUDA
    for name in ("high", "input"):
        assert torch.isfinite(gpu[name]).all()
        cos = torch.nn.functional.cosine_similarity(gpu[name].cpu().flatten(0, 2), cpu[name].flatten(0, 2), dim=-1)
        assert cos.mean() > 0.99, (name, cos.mean())


def test_sliding_window_evaluation_on_cuda_equals_cpu(tmp_path):
    from fixtures import run_spec, tiny_vit_backbone, train_settings, write_tiny_vit
    from pipeline.models import RunModel, build_psi
    from pipeline.predict import sliding_logits
    from pipeline.views import View

    path = write_tiny_vit(tmp_path / "vit.pth")
    backbone = tiny_vit_backbone(path)
    torch.manual_seed(0)
    train = train_settings(K=6, depth=1)
    psi = build_psi(backbone.input_dim, train).eval()
    model = RunModel(run_spec("nes", run="nes-gpu", train=train), psi, input_dim=backbone.input_dim)
    view = View.from_config({"mode": "sliding", "short_side": 96, "crop": 64, "stride": 32})
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    cpu = sliding_logits(model, backbone, image, view, torch.device("cpu"))
    model.psi.to(CUDA)
    gpu = sliding_logits(model, backbone.to(CUDA), image, view, CUDA)
    assert gpu.shape == cpu.shape == (6, 120, 160)
    # bf16 backbone on CUDA: the same clusters almost everywhere
    assert (gpu.argmax(0).cpu() == cpu.argmax(0)).float().mean() > 0.95


def test_batches_on_cuda_equal_the_cpu_batches(tmp_path):
    """Streamed (through pinned memory, copied asynchronously) or resident in GPU memory, the
    batches are the CPU's, bit for bit."""
    from PIL import Image

    from fixtures import tiny_vit_backbone
    from pipeline.batches import batches
    from pipeline.cache import FeatureCache
    from pipeline.datasets.folder import load_folder
    from pipeline.features import extract_split
    from pipeline.views import View

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    extract_split(
        load_folder(tmp_path / "img", "x"), backbone, tmp_path / "c.zarr", View("resize", (64, 64)), batch_size=3
    )
    cache = FeatureCache(tmp_path / "c.zarr")
    schedule = [np.array([0, 2]), np.array([1, 5]), np.array([3, 4])]
    cpu = list(batches(cache, schedule, torch.device("cpu"), "off"))
    for resident in ("off", "on"):
        gpu = list(batches(cache, schedule, CUDA, resident))
        assert len(gpu) == len(cpu)
        for a, b in zip(cpu, gpu):
            for name in a:
                assert b[name].device.type == "cuda"
                torch.testing.assert_close(b[name].cpu(), a[name], rtol=0, atol=0)
