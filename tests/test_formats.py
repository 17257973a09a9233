"""Outputs whole or absent: a folder written through `formats.whole_folder` holds one complete
result or the previous one, keeps what other stages put beside it, and two writers take turns."""

import threading

import pytest

from pipeline.formats import whole_folder


def _fill(folder, tag, names=("metrics.json", "report.md")):
    for name in names:
        (folder / name).write_text(f"{tag} {name}")


def _contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_writer_leaves_the_previous_folder_as_it_was(tmp_path):
    target = tmp_path / "camvid-native"
    with whole_folder(target) as folder:
        _fill(folder, "first")
    before = _contents(target)
    with pytest.raises(OSError), whole_folder(target) as folder:
        (folder / "metrics.json").write_text("second metrics.json")
        raise OSError(27, "File too large")  # what a file-size limit raises half way
    assert _contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()) == []


def test_owned_entries_are_replaced_and_other_files_are_kept(tmp_path):
    target = tmp_path / "camvid-native"
    with whole_folder(target) as folder:
        _fill(folder, "first")
        (folder / "overlays").mkdir()
        (folder / "overlays" / "old_image.png").write_text("first panel")
    (target / "alignment.json").write_text("another stage's")
    owned = ("metrics.json", "report.md", "overlays")
    with whole_folder(target, owned=owned) as folder:
        _fill(folder, "second")
        (folder / "overlays").mkdir()
        (folder / "overlays" / "new_image.png").write_text("second panel")
    assert _contents(target) == {
        "alignment.json": "another stage's",
        "metrics.json": "second metrics.json",
        "report.md": "second report.md",
        "overlays/new_image.png": "second panel",  # never a panel of the first evaluation beside it
    }


def test_two_writers_of_one_folder_leave_one_whole_result(tmp_path):
    target = tmp_path / "out"
    names = tuple(f"f{i}.txt" for i in range(50))
    started = threading.Barrier(2)

    def write(tag):
        with whole_folder(target, owned=names) as folder:
            started.wait()
            _fill(folder, tag, names)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tags = {text.split()[0] for text in _contents(target).values()}
    assert len(tags) == 1 and len(_contents(target)) == len(names)
