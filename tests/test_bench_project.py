"""The project build `fimstream bench collector` times: made from a user's tree or tarball, it really builds
(the timed script fails when make fails), and a tree it cannot build is refused with the reason."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import project_build  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("make") and shutil.which("cc")), reason="needs make and cc")

MAKEFILE = "prog: main.o\n\tcc -o prog main.o\nmain.o: main.c\n\tcc -O2 -c main.c\n"


def _tree(root: Path, source: str = "int main(void) { return 0; }\n") -> Path:
    root.mkdir()
    (root / "Makefile").write_text(MAKEFILE)
    (root / "main.c").write_text(source)
    (root / ".git").mkdir()  # the user's repository is not copied: the build makes its own
    return root


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("as_tarball", [False, True])
def test_a_users_tree_is_built_and_timed(tmp_path, as_tarball):
    src = _tree(tmp_path / "myproj")
    if as_tarball:
        with tarfile.open(tmp_path / "myproj.tar.gz", "w:gz") as tar:
            tar.add(src, arcname="myproj-1.0")
        src = tmp_path / "myproj.tar.gz"
    work = tmp_path / "work"
    work.mkdir()
    tarball, make = project_build.prepare(work, src)
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"project/Makefile", "project/main.c"} <= names and "project/.git" not in names
    out = _run(project_build.build_argv(tarball, make, 2, git=bool(shutil.which("git"))))
    assert out.returncode == 0, out.stderr
    n, ns = out.stdout.split()
    assert n == "1" and int(ns) > 0
    assert not (work / "tree").exists()  # each build starts from the tarball again
    assert "main.o" in (work / "make.log").read_text()  # make ran the compiler


def test_a_failing_build_fails_the_run_with_the_make_log(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    tarball, make = project_build.prepare(work, _tree(tmp_path / "broken", "int main(void) { return }\n"))
    out = _run(project_build.build_argv(tarball, make, 1, git=False))
    assert out.returncode != 0 and out.stdout == ""
    assert "main.c" in out.stderr  # the compiler's complaint, from the make log's tail


def test_a_tree_without_a_makefile_is_refused(tmp_path):
    src = tmp_path / "nomake"
    src.mkdir()
    (src / "main.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(project_build.ProjectError, match="no makefile"):
        project_build.prepare(tmp_path, src)


def test_a_cached_download_with_another_hash_is_refused_and_removed(tmp_path):
    bad = tmp_path / project_build.LUA["url"].rsplit("/", 1)[1]
    bad.write_bytes(b"not the sdist")
    with pytest.raises(project_build.ProjectError, match="sha256"):
        project_build.prepare(tmp_path / "w", None, cache=tmp_path)
    assert not bad.exists()
