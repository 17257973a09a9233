"""Progress in logs: when stderr is not a terminal (a rule's log), progress comes as separate
timestamped lines at a modest rate, not one line of carriage returns."""

import re


def test_progress_in_a_log_is_timestamped_lines(capsys, monkeypatch):
    from pipeline.runtime import progress

    monkeypatch.setenv("NES_PROGRESS_SECONDS", "0")
    for _ in progress(range(5), desc="work", unit="it"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) >= 2 and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d work: ", line) for line in lines)
    assert "5/5" in lines[-1]


def test_atomic_writes_leave_the_old_file_and_no_temporary_on_failure(tmp_path):
    import pytest

    from pipeline.formats import atomic_path, read_json, write_json

    target = tmp_path / "metrics.json"
    write_json(target, {"miou": 0.5})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"miou": 0.')  # half written when the writer dies
        raise RuntimeError("killed")
    assert read_json(target) == {"miou": 0.5} and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_json(target, {"miou": 0.7})
    assert read_json(target) == {"miou": 0.7} and len(list(tmp_path.iterdir())) == 1
