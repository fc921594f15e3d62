"""Shared machinery: pinned server subprocesses, h2load runs, CPU/RSS readings, statistics.

Servers run on core 0 and load generators on core 1 (taskset), so neither steals the other's
CPU and the server's CPU per call is read from /proc without the client's share in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
#: The environment for a counted child: str hashes (dict and set layouts) seeded alike in
#: every run, so two runs of one code count the same work.
FIXED_HASHES = {**os.environ, "PYTHONHASHSEED": "0"}
SERVER_CORE = "0"
CLIENT_CORE = "1"
DRIVERS = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def driver_id(n: int) -> str:
    return f"drv-{n:05d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    """`argv` pinned to one core when taskset exists (it does on Debian: util-linux)."""
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else list(argv)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout_s} s")


@dataclass
class Server:
    """A server subprocess on the server core."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def server(kind: str, *args: str, workdir: Path, module: str = "bench.servers") -> Iterator[Server]:
    """Run `python -m MODULE KIND --port P ARGS...` pinned to the server core."""
    port = free_port()
    log = workdir / f"server-{module}-{kind}-{port}.log"
    argv = [PYTHON, "-m", module, kind, "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CORE, argv), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    running = Server(proc, port, log)
    try:
        wait_for_port(port, proc)
        yield running
    finally:
        running.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process, its threads (grpc core runs its own) and its
    live child processes (`serve --workers` is a supervisor with one child per worker)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds so far, as `cpu_seconds` counts them: callgrind counts
    only user-space instructions, so a share measured in instructions leaves out the
    kernel's part of each call (sockets, SQLite's WAL writes), which this shows."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        child_pids = [int(p) for p in children.read_text().split()]
    except OSError:
        child_pids = []
    for child in child_pids:
        with contextlib.suppress(OSError):  # a child that just exited
            child_user, child_system = cpu_split(child)
            user, system = user + child_user, system + child_system
    return user, system


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def grpc_frame(message: bytes) -> bytes:
    """The 5-byte gRPC length prefix (uncompressed) and the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[index])


@dataclass
class LoadResult:
    """One measured point."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    requests: int
    server_cpu_pct: float
    cpu_us_per_call: float
    bytes_per_response: float
    header_bytes_per_response: float
    extra: dict[str, Any] = field(default_factory=dict)


H2LOAD_MISSING = "h2load not found: install the Debian package nghttp2-client"


def h2load(
    url: str,
    *,
    clients: int,
    duration_s: float,
    server_pid: int,
    body: bytes | None = None,
    headers: Sequence[str] = (),
    http1: bool = False,
    warmup_s: float = 1.0,
    client_core: str = CLIENT_CORE,
) -> LoadResult:
    """Closed-loop load: `clients` connections, one request in flight each, for
    `duration_s` after `warmup_s`; latencies from h2load's per-request log."""
    if shutil.which("h2load") is None:
        raise RuntimeError(H2LOAD_MISSING)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["h2load", "-c", str(clients), "-m", "1", "-t", "1"]
        argv += ["-D", str(max(1, round(duration_s))), f"--warm-up-time={max(1, round(warmup_s))}"]
        argv += ["--log-file", f"{tmp}/log.tsv"]
        if body is not None:
            (Path(tmp) / "body").write_bytes(body)
            argv += ["-d", f"{tmp}/body"]
        for header in headers:
            argv += ["-H", header]
        if http1:
            argv.append("--h1")
        argv.append(url)
        cpu0 = cpu_seconds(server_pid)
        t0 = time.monotonic()
        out = subprocess.run(pinned(client_core, argv), capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(server_pid) - cpu0
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed: {out.stderr or out.stdout}")
        latencies, start_us, statuses = [], [], {}
        for line in (Path(tmp) / "log.tsv").read_text().splitlines():
            start, status, elapsed = line.split("\t")[:3]
            if status == "0":  # logged without a response at the window's edge; not a call
                continue
            start_us.append(int(start))
            latencies.append(int(elapsed) / 1000.0)
            statuses[status] = statuses.get(status, 0) + 1
    text = out.stdout
    done = _int(r"requests: \d+ total, \d+ started, (\d+) done", text)
    ok = _int(r"(\d+) succeeded", text)
    failed = _int(r"(\d+) failed", text) + _int(r"(\d+) errored", text)
    data_bytes = _int(r"\((\d+)\) data", text)
    header_bytes = _int(r"\((\d+)\) headers", text)
    rps = _float(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    latencies.sort()
    return LoadResult(
        rps=rps,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        p999_ms=percentile(latencies, 99.9),
        errors=failed
        + _int(r"status codes: \d+ 2xx, (\d+) 3xx", text)
        + _int(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx", text)
        + _int(r"status codes: \d+ 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx", text),
        requests=done,
        server_cpu_pct=100 * cpu / wall,
        # Server CPU share over the run divided by the measured throughput.
        cpu_us_per_call=1e6 * (cpu / wall) / max(rps, 1e-9),
        bytes_per_response=data_bytes / max(1, ok),
        header_bytes_per_response=header_bytes / max(1, ok),
        extra={"statuses": statuses, "h2load": text.strip().splitlines()[-12:]},
    )


def _int(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def _float(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def summarize(runs: Sequence[LoadResult]) -> dict[str, Any]:
    """Median of each figure over the repeats, and the RPS spread (min-max)."""
    out: dict[str, Any] = {}
    for name in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "server_cpu_pct"):
        out[name] = statistics.median(getattr(r, name) for r in runs)
    out["cpu_us_per_call"] = statistics.median(r.cpu_us_per_call for r in runs)
    out["errors"] = sum(r.errors for r in runs)
    out["bytes_per_response"] = statistics.median(r.bytes_per_response for r in runs)
    out["header_bytes_per_response"] = statistics.median(r.header_bytes_per_response for r in runs)
    rps = [r.rps for r in runs]
    out["rps_min"], out["rps_max"] = min(rps), max(rps)
    out["spread_pct"] = 100 * (max(rps) - min(rps)) / max(1e-9, statistics.median(rps))
    out["repeats"] = len(runs)
    out["runs"] = [asdict(r) for r in runs]
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    from importlib import metadata

    for dist in ("grpcio", "protobuf", "uvloop", "fastapi", "uvicorn", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    versions["h2load"] = h2.stdout.strip() if shutil.which("h2load") else "missing"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": os.getloadavg(),
        "versions": versions,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def run_async(coro: Any) -> Any:
    """Run a client coroutine on a fresh loop. Unlike asyncio.run, do not wait for the default
    executor's threads at the end: grpc.aio can leave one blocked after its channels close."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
