"""medssr.files: a write is all or nothing under the real name, whatever stops it (an exception, a SIGKILL)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from medssr.files import atomic_dir, atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    f = write_text_atomic(tmp_path / "report.json", "old\n")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(f) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash")
    assert f.read_text() == "old\n" and _names(tmp_path) == ["report.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    f = write_bytes_atomic(tmp_path / "sub" / "a.bin", b"old")
    with atomic_path(f) as tmp:
        assert tmp.parent == f.parent and tmp != f
        tmp.write_bytes(b"new")
        assert f.read_bytes() == b"old"  # not before the block ends
    assert f.read_bytes() == b"new" and _names(f.parent) == ["a.bin"]


def test_fsync_write_gives_the_same_bytes(tmp_path):
    assert write_text_atomic(tmp_path / "p.jsonl", "caf\u00e9\n", fsync=True).read_bytes() == "caf\u00e9\n".encode()


def test_write_json_atomic_bytes_are_json_dumps_indent_2_and_a_newline(tmp_path):
    obj = {"z": 1, "a": [1.5, None, True], "name": "Sj\u00f6gren syndrome", "nested": {"k": "v"}}
    f = write_json_atomic(tmp_path / "r.json", obj)
    assert f.read_bytes() == (json.dumps(obj, indent=2) + "\n").encode()
    g = write_json_atomic(tmp_path / "m.json", obj, indent=1, sort_keys=True, ensure_ascii=False)
    assert g.read_bytes() == (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    f = tmp_path / "entry.json"
    seen: list[Path] = []
    both_inside = threading.Barrier(2, timeout=10)

    def write(text: str) -> None:
        with atomic_path(f) as tmp:
            tmp.write_text(text * 1000)
            seen.append(tmp)
            both_inside.wait()  # both temporaries exist at once

    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(set(seen)) == 2 and f.read_text() in ("a" * 1000, "b" * 1000) and _names(tmp_path) == ["entry.json"]


def _dir_with(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_failed_directory_build_leaves_the_old_directory_and_no_temporary(tmp_path):
    d = _dir_with(tmp_path / "index", **{"manifest.json": "old"})
    with pytest.raises(RuntimeError, match="encoder crashed"), atomic_dir(d) as tmp:
        (tmp / "manifest.json").write_text("new")
        raise RuntimeError("encoder crashed")
    assert _names(d) == ["manifest.json"] and (d / "manifest.json").read_text() == "old"
    assert _names(tmp_path) == ["index"]


def test_atomic_dir_replaces_an_existing_directory_whole(tmp_path):
    d = _dir_with(tmp_path / "model", **{"config.json": "old", "stale.bin": "x"})
    with atomic_dir(d) as tmp:
        assert list(tmp.iterdir()) == [] and tmp.parent == d.parent
        (tmp / "config.json").write_text("new")
        assert (d / "stale.bin").exists()  # the old one stays in place until the new one is complete
    assert _names(d) == ["config.json"] and (d / "config.json").read_text() == "new"
    assert _names(tmp_path) == ["model"]


def test_atomic_dir_creates_a_missing_directory_and_its_parents(tmp_path):
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "a" / "b" / "x").read_text() == "1" and _names(tmp_path / "a") == ["b"]


def test_keep_existing_keeps_a_directory_another_process_finished_first(tmp_path):
    d = tmp_path / "cache" / "smollm2"
    complete = lambda p: (p / "config.json").exists()  # noqa: E731
    with atomic_dir(d, keep_existing=complete) as tmp:
        (tmp / "config.json").write_text("ours")
        _dir_with(d, **{"config.json": "theirs"})  # the other process renames its copy in while we work
    assert (d / "config.json").read_text() == "theirs" and _names(d.parent) == ["smollm2"]
    (d / "config.json").unlink()  # an incomplete one is not kept
    with atomic_dir(d, keep_existing=complete) as tmp:
        (tmp / "config.json").write_text("ours")
    assert (d / "config.json").read_text() == "ours" and _names(d.parent) == ["smollm2"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


def test_leftovers_of_a_killed_build_are_cleared_and_a_moved_aside_directory_is_put_back(tmp_path):
    from medssr.files import _HOST

    pid = _dead_pid()
    _dir_with(tmp_path / f".model.{_HOST}-{pid}-0123abcd.tmp", **{"half.bin": "x"})
    _dir_with(tmp_path / f".model.{_HOST}-{pid}-0123abcd.old", **{"config.json": "old"})  # killed between the renames
    _dir_with(tmp_path / f".model.otherhost-{pid}-0123abcd.tmp", **{"theirs.bin": "x"})  # another host's build: not ours
    with atomic_dir(tmp_path / "model") as tmp:
        assert (tmp_path / "model" / "config.json").read_text() == "old"  # back under the real name before the swap
        (tmp / "config.json").write_text("new")
    assert _names(tmp_path) == [f".model.otherhost-{pid}-0123abcd.tmp", "model"]
    assert (tmp_path / "model" / "config.json").read_text() == "new"


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from medssr.files import atomic_dir, atomic_path

    kind, path = sys.argv[1], Path(sys.argv[2])
    with (atomic_path(path) if kind == "file" else atomic_dir(path)) as tmp:
        target = tmp if kind == "file" else tmp / "weights.bin"
        with open(target, "wb") as fh:
            fh.write(b"new" * 100_000)  # well under way
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
""")


def _kill_mid_write(kind: str, path: Path) -> None:
    """Run CHILD, SIGKILL it once it reports it is half way through its write (at most ~30 s in all)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(path)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready and child.stdout.readline().strip() == "writing", "the child never started writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_a_sigkill_mid_write_leaves_the_old_file_under_its_name(tmp_path):
    f = write_json_atomic(tmp_path / "train.json", {"rows": 1})
    _kill_mid_write("file", f)
    assert json.loads(f.read_text()) == {"rows": 1}


def test_a_sigkill_mid_directory_build_leaves_the_old_directory_and_the_next_build_clears_its_temporary(tmp_path):
    d = _dir_with(tmp_path / "model", **{"config.json": "old"})
    _kill_mid_write("dir", d)
    assert _names(d) == ["config.json"] and (d / "config.json").read_text() == "old"
    assert len(_names(tmp_path)) == 2  # the killed child's hidden temporary
    with atomic_dir(d) as tmp:
        (tmp / "config.json").write_text("new")
    assert _names(tmp_path) == ["model"] and (d / "config.json").read_text() == "new"
