"""Run a model repository on the real `tritonserver` that the nvidia-pytriton wheel bundles.

No container and no GPU needed: used by the serving tests and the serving benchmark, and by a
user who wants to try a repository on a laptop before deploying it. It binds loopback only.

What it takes to run that binary outside PyTriton (each learnt the hard way):
- the Python backend needs the stub built for this interpreter's version copied into
  `backends/python/` (PyTriton does the same);
- the stub links libpython: this interpreter's LIBDIR must come first on LD_LIBRARY_PATH, or a
  system libpython of another patch release is loaded beside our stdlib and model load fails;
- the stub imports numpy and stagevar from the interpreter found on PATH: this environment's
  `bin` must come first (PyTriton pins numpy<2; a numpy 2 elsewhere mis-decodes BYTES inputs);
- a keep-alive client connection holds shutdown until the exit timeout (callers close theirs);
- a killed server can leave stub processes and /dev/shm regions behind: ours carry a unique
  prefix, so `stop()` kills exactly those stubs by PID and removes exactly those regions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from stagevar.runtime.errors import StagevarError

SHM_DIR = Path("/dev/shm")


def bundled_server_dir() -> Path:
    """The `tritonserver` distribution inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise StagevarError("The bundled Triton server needs nvidia-pytriton; "
                            "pip install 'stagevar[serve-triton]' in its own virtualenv (it pins numpy<2).") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTritonServer:
    """`with LocalTritonServer(repo) as server:` starts tritonserver on 127.0.0.1 and waits until
    every model in `models` is ready; leaving the block stops it and cleans up after it."""

    def __init__(self, repo: str | os.PathLike, models: tuple[str, ...] = ("stagevar_pipeline",),
                 startup_timeout_s: float = 120.0, exit_timeout_s: int = 10):
        self.repo = Path(repo).resolve()
        self.models = models
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.shm_prefix = f"stagevar_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.http_port = self.grpc_port = 0
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "tritonserver.log"

    def __enter__(self) -> "LocalTritonServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        dist = bundled_server_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="stagevar-triton-"))
        server = self.workdir / "tritonserver"
        for part in ("bin", "backends", "caches"):
            shutil.copytree(dist / part, server / part, ignore=shutil.ignore_patterns("__pycache__"))
        stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
        if not stub.is_file():
            raise StagevarError(f"nvidia-pytriton has no Python backend stub for Python "
                                f"{sys.version_info[0]}.{sys.version_info[1]}; use Python 3.8 to 3.13.")
        shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [
            str(server / "bin" / "tritonserver"), f"--model-repository={self.repo}",
            f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(dist),
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _env(self, dist: Path) -> dict:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(dist.parent.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}"
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        paths = ["/v2/health/live", *(f"/v2/models/{m}/ready" for m in self.models)]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StagevarError(f"tritonserver exited with code {self.process.returncode} while starting; "
                                    f"its log: {self.log_tail()}")
            if all(self._get(p) == 200 for p in paths):
                return
            time.sleep(0.25)
        raise StagevarError(f"tritonserver was not ready after {self.startup_timeout_s:.0f} s; "
                            f"its log: {self.log_tail()}")

    def _get(self, path: str) -> int | None:
        # A fresh connection each time, closed at once: no keep-alive left to delay shutdown.
        req = urllib.request.Request(f"http://{self.http_url}{path}", headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def log_tail(self, lines: int = 15) -> str:
        """The server log's error lines (E...) if it has any, else its last lines, on one line."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if re.match(r"^E\d{4} ", line)]
        return " | ".join((errors or text)[-lines:])

    def stop(self) -> int | None:
        """SIGINT (graceful unload), SIGKILL to the process group after a grace period, then kill
        our leftover stubs by PID and remove our shared-memory regions. Returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    _kill_group(self.process.pid)
                    self.process.wait(timeout=10)
            code = self.process.returncode
        for pid in self._stub_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for region in self._shm_regions():
            region.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def leftovers(self) -> list[str]:
        """What of this server still exists: its process, stub processes, shared-memory regions."""
        left = []
        if self.process is not None and self.process.poll() is None:
            left.append(f"tritonserver pid {self.process.pid}")
        left += [f"stub pid {pid}" for pid in self._stub_pids()]
        left += [str(p) for p in self._shm_regions()]
        return left

    def _stub_pids(self) -> list[int]:
        # The stub's command line carries the shared-memory region name, hence our prefix.
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if self.shm_prefix.encode() in cmdline:
                pids.append(int(entry.name))
        return pids

    def _shm_regions(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*")) if SHM_DIR.is_dir() else []


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
