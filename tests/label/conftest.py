"""Fixtures of the labelling app's tests: databases (SQLite always, a real PostgreSQL server when its
binaries are installed), a served app in a subprocess, and Chromium for the browser tests."""
import contextlib
import glob
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from rlhf_jax.label.simulate import wait_ready

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> pathlib.Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return pathlib.Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return pathlib.Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server of its own in a temporary directory (Debian's `postgresql` package), or skip
    naming what is missing. Yields the URL of its maintenance database."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` "
                    "package to run the storage tests against PostgreSQL too")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    # initdb refuses to run as root: run the server as the package's `postgres` user then
    run_as: list[str] = []
    base = pathlib.Path(tempfile.mkdtemp(prefix="rlhf_jax_pg_"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    log = base / "server.log"

    def run(*cmd):
        return subprocess.run(run_as + [str(c) for c in cmd], capture_output=True, text=True)

    out = run(bindir / "initdb", "-D", data, "-U", "rlhf", "--auth=trust", "-E", "UTF8", "--no-instructions")
    if out.returncode:
        pytest.skip(f"initdb failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    out = run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60",
              "-o", f"-p {port} -h 127.0.0.1 -k {base} -F", "start")
    if out.returncode:
        text = log.read_text() if log.exists() else out.stderr
        pytest.skip(f"the PostgreSQL server did not start: {text.strip()[-300:]}")
    try:
        yield f"postgresql://rlhf@127.0.0.1:{port}/postgres"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    import psycopg
    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(pg_server.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return str(tmp_path / "labels.sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """Each storage test once on SQLite and once on PostgreSQL (which skips without its server)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@contextlib.contextmanager
def serve(db: str, port: int | None = None):
    """`python -m rlhf_jax.label serve` on a free port in a subprocess; yields (url, process)."""
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_jax.label", "serve", "--db", db, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser():
    """Chromium driven by Playwright (the system's browser: Playwright never downloads one here)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on PATH: install Debian's `chromium` package to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()
