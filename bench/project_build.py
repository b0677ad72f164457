"""A real project's build as a benchmark workload: the source unpacked, put under git, built with make on
every core, its tree checked with git and archived. The small build of `bench collector`'s realistic phase
compiles a 30-line file: process start-up is most of it, the most syscall-dense part of any build. This
one spends its time as builds do, in the compiler.

The default project is Lua 5.4 (35 C files, ~4 s with make -j2 here), as vendored in lupa's source
distribution on PyPI: the registry every fimstream install reaches. It is downloaded once, checked against
its pinned hash and cached. `--project-src` takes any directory or tarball with a makefile instead.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import tarfile
import urllib.request
from pathlib import Path

LUA = {
    "url": "https://files.pythonhosted.org/packages/c3/a6/0f869fbb07c393f15473b1eefefb7b5bec162fb7481803d040ed4dc46002/"
           "lupa-2.8.tar.gz",
    "sha256": "d8022641b9ec8ecf2c5ecbe9f47e5a70e0b87c4b5ae921b92cb02a638e0acd08",
    "member": "lupa-2.8/third-party/lua54/",
    # its developer makefile; no readline (a header the host may lack) and no test suite or manual
    "make": "make -j{jobs} MYLIBS=-ldl MYCFLAGS='-std=c99 -DLUA_USE_LINUX'",
    "skip": (".git", "testes/", "manual/"),
}


class ProjectError(RuntimeError):
    """The project's source cannot be had (offline, bad hash, no makefile): the phase is skipped with this."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fimstream" / "bench"


def _fetch_lua(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / LUA["url"].rsplit("/", 1)[1]
    if not sdist.exists():
        part = sdist.with_suffix(".part")
        try:
            with urllib.request.urlopen(LUA["url"], timeout=60) as r, open(part, "wb") as out:
                shutil.copyfileobj(r, out)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise ProjectError(f"cannot download the default project (Lua 5.4 in {LUA['url']}): {e}; "
                               "pass --project-src DIR (any source tree with a makefile)") from e
        part.rename(sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != LUA["sha256"]:
        sdist.unlink()
        raise ProjectError(f"{sdist.name}: sha256 {digest}, expected {LUA['sha256']} (removed; run again)")
    return sdist


def _unpack_lua(sdist: Path, stage: Path) -> None:
    prefix = LUA["member"]
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
            if not rel or rel.startswith(LUA["skip"]) or not (m.isfile() or m.isdir()):
                continue
            m.name = f"project/{rel}"
            tar.extract(m, stage, filter="data")


def _unpack_user(src: Path, stage: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, stage / "project", symlinks=True)
        return
    if not tarfile.is_tarfile(src):
        raise ProjectError(f"--project-src {src}: neither a directory nor a tarball")
    with tarfile.open(src) as tar:
        tar.extractall(stage / "unpacked", filter="data")
    top = list((stage / "unpacked").iterdir())
    (top[0] if len(top) == 1 and top[0].is_dir() else stage / "unpacked").rename(stage / "project")


def prepare(workdir: Path, src: Path | None = None, cache: Path | None = None) -> tuple[Path, str]:
    """workdir/project.tar (top directory `project`) and the make command that builds it ({jobs} to fill)."""
    if not shutil.which("make"):
        raise ProjectError("no make on this host")
    stage = workdir / "project-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    if src is None:
        _unpack_lua(_fetch_lua(cache or default_cache()), stage)
        make = LUA["make"]
    else:
        _unpack_user(Path(src), stage)
        make = "make -j{jobs}"
    dot_git = stage / "project" / ".git"  # the build makes its own repository (a submodule's is a file)
    if dot_git.is_dir() and not dot_git.is_symlink():
        shutil.rmtree(dot_git)
    elif dot_git.exists() or dot_git.is_symlink():
        dot_git.unlink()
    if not any((stage / "project" / name).exists() for name in ("makefile", "Makefile", "GNUmakefile")):
        raise ProjectError(f"no makefile at the top of the project ({src or LUA['url']})")
    tarball = workdir / "project.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(stage / "project", arcname="project")
    shutil.rmtree(stage)
    return tarball, make


def build_argv(tarball: Path, make: str, jobs: int, git: bool) -> list[str]:
    """One timed build, printing "1 <ns>" like the other loads: unpack, git init + add + commit, make,
    git status + log --stat, archive the tree (tar czf), remove it. A failed make shows its log's tail."""
    work = shlex.quote(str(tarball.parent))
    make = make.format(jobs=jobs)
    g = "git -c user.name=bench -c user.email=bench@localhost"
    vcs_in = f"{g} init -q && {g} add -A && {g} commit -qm import && " if git else ""
    vcs_out = f"{g} status --short >/dev/null && {g} log --stat >/dev/null && " if git else ""
    script = (f"cd {work} && t0=$(date +%s%N) && rm -rf tree && mkdir tree && tar -xf project.tar -C tree && "
              f"cd tree/project && {vcs_in}"
              f"{{ {make} >{work}/make.log 2>&1 || {{ tail -20 {work}/make.log >&2; exit 1; }}; }} && "
              f"{vcs_out}cd {work} && tar -czf tree.tgz tree && rm -rf tree tree.tgz && "
              f"echo 1 $(( $(date +%s%N) - t0 ))")
    return ["/bin/sh", "-c", script]
