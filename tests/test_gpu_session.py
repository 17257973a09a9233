"""bench/gpu_session.py keeps its budget: a step starts only with the time it needs left, every
step leaves a record, and a finished session's folder is never written over."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_session.py"
STEPS = ["gpu_check", "step_compile", "camvid_step", "camvid_dinov2", "msrc_dinov2", "msrc_lite0", "pascal_size"]


def session(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True)


def test_without_time_left_every_step_is_skipped_with_its_reason_and_recorded(tmp_path):
    done = session(tmp_path / "s", "--budget", "30")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "s" / "session.json").read_text())
    assert [s["step"] for s in record["steps"]] == STEPS
    for step in record["steps"]:
        assert "s left, the step needs about" in step["skipped"]
        assert json.loads((tmp_path / "s" / "steps" / f"{step['step']}.json").read_text()) == step
    assert record["budget_s"] == 30 and "torch" in record and "device" in record


def test_only_runs_the_steps_named_and_a_finished_session_is_not_written_over(tmp_path):
    done = session(tmp_path / "s", "--budget", "0", "--only", "camvid_step", "pascal_size")
    assert done.returncode == 0, done.stderr
    steps = json.loads((tmp_path / "s" / "session.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["camvid_step", "pascal_size"]
    again = session(tmp_path / "s", "--budget", "0")
    assert again.returncode != 0 and "session.json" in again.stderr
