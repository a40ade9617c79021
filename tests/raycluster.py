"""Local Ray clusters for the tests and ``benchmarks/bench_ray.py``: started here, on loopback, stopped by PID.

Every node is one ``ray start --block`` process (a head, optionally more nodes joining it), with its state in a
fresh temporary folder (``--temp-dir``: a short one, since Ray's socket paths must fit in 107 bytes), never
``/tmp/ray``; token authentication (``RAY_AUTH_MODE=token``) with
a token file of our own (``RAY_AUTH_TOKEN_PATH``), never ``~/.ray``. Stopping sends SIGTERM to each ``--block``
process, which stops the node's processes, then kills whatever still runs with the cluster's temp dir in its
command line: only what we started, never ``ray stop`` (which stops every Ray process on the machine). The nodes
skip Ray's drain on SIGTERM (``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0``): with the whole process group signalled
the GCS is gone before the drain request, which then waits out its 30 s and ``stop`` would kill after 10 s.

Ports: a node's own services get ports from :func:`free_port`, which gives each pytest-xdist worker its own block
of ports (a plain run takes block 0) below Linux's ephemeral range, so that clusters started at the same time by two
workers never pick the same port; worker processes bind ports the OS chooses (``--min/max-worker-port=0``), never
Ray's shared default range 10002-19999.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PORT_BASE, PORT_BLOCK, PORT_BLOCKS = 20000, 1500, 8  # 20000-31999: above Ray's worker range, below ephemeral ports
_next_port: list[int] = []  # this process's cursor in its block


def _port_block() -> range:
    """This process's ports: block ``n`` for pytest-xdist worker ``gwn``, block 0 elsewhere (a plain run)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = PORT_BASE + (n % PORT_BLOCKS) * PORT_BLOCK
    return range(start, start + PORT_BLOCK)


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", ""):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port nobody listens on, from this process's block (never handed out twice in a row by this process)."""
    block = _port_block()
    if not _next_port:
        _next_port.append(block.start + secrets.randbelow(len(block)))
    for _ in range(len(block)):
        port = _next_port[0]
        _next_port[0] = block.start + (port + 1 - block.start) % len(block)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")


def ray_exe() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class Cluster:
    root: Path  # temp dir of the cluster's state
    env: dict[str, str]  # the environment for drivers and `ray job submit`
    port: int
    dashboard_port: int | None
    ray_dir: Path  # Ray's --temp-dir: short, because Ray's socket paths under it must fit in 107 bytes
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node(self, args: list[str], log: str) -> subprocess.Popen:
        cmd = [ray_exe(), "start", "--block", "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0"]
        cmd += args
        env = {**self.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # stop() ends the node at once
        with open(self.root / log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def _ports(self) -> list[str]:
        """Ports of one node's own services: free ones, so that two nodes share this host without clashing."""
        names = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
                 "metrics-export", "runtime-env-agent")  # fmt: skip
        return [f"--{name}-port={free_port()}" for name in names]

    def start_head(self, num_cpus: int, dashboard: bool = False) -> None:
        args = [
            "--head",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.ray_dir}",
            f"--ray-client-server-port={free_port()}",
            *self._ports(),
        ]
        if dashboard:
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
            args += [f"--dashboard-port={self.dashboard_port}"]
        else:
            args += ["--include-dashboard=false"]
        self._node(args, "head.log")
        self.wait_nodes(1)

    def add_node(self, num_cpus: int) -> None:
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1"]
        self._node([*args, *self._ports()], f"node{len(self.nodes)}.log")
        self.wait_nodes(len(self.nodes))

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Until ``n`` nodes are alive (asked through a short-lived driver)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.nodes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a ray node exited ({proc.returncode}): {self.logs()}")
            if not self._started():  # a driver costs 1-2 s of CPU: ask only once every node says it is up
                time.sleep(0.2)
                continue
            r = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True)
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n).encode()]:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not get {n} nodes in {timeout}s: {self.logs()}")

    def _started(self) -> bool:
        """Whether every node's ``ray start`` has printed that its runtime started (it still has to register)."""
        logs = [self.root / "head.log", *(self.root / f"node{i}.log" for i in range(1, len(self.nodes)))]
        return all(p.exists() and b"Ray runtime started" in p.read_bytes() for p in logs)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("*.log")))

    def ours(self) -> list[psutil.Process]:
        """Processes whose command line names this cluster's temp dir or whose parent is one of our nodes."""
        marks, found = (str(self.root), str(self.ray_dir)), []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                env = proc.info["environ"] or {}
            except (psutil.Error, TypeError):
                continue
            if any(m in cmd for m in marks) or env.get("RAY_AUTH_TOKEN_PATH", "").startswith(marks[0]):
                found.append(proc)
        return found

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.nodes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in self.ours():
            if proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        self.nodes.clear()
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def make_cluster(root: Path, extra_env: dict[str, str] | None = None) -> Cluster:
    """A cluster description with its own token; start it with ``start_head`` (and ``add_node``)."""
    root.mkdir(parents=True, exist_ok=True)
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        **(extra_env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    ray_dir = Path(tempfile.mkdtemp(prefix="sfray-"))  # removed by stop()
    return Cluster(root=root, env=env, port=free_port(), dashboard_port=free_port(), ray_dir=ray_dir)
