"""Instructions per GetDriver call, counted by valgrind's callgrind, for the bare floor, our
servicer alone, and the call pipeline with its concerns added one at a time.

Wall-clock throughput on this shared 2-core machine drifts by a factor of 2 between days
and by ±10 % between rounds; the same server's instruction count repeats within ~0.5 % on a
quiet machine (within a few per cent while other work loads it), so a change of a few per
cent in our per-call work shows up here first.

Caveats: instructions are not time (grpc core's C and the interpreter differ in cycles per
instruction) and kernel work (system calls) is not counted. Under valgrind a call takes ~50
times longer, so work done per interval rather than per call is spread over fewer calls: the
access log's flush every 50 ms and its per-millisecond timestamp text are over-counted. The
count also depends on how calls arrive (how many one event-loop iteration handles), so the
server and h2load are pinned to their own cores as in every other part; compare counts from
the same run.

    python -m bench.instructions [LABEL ...]     # every variant by default, 3 runs each
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    CLIENT_CORE,
    PYTHON,
    ROOT,
    SERVER_CORE,
    free_port,
    pinned,
    wait_for_port,
)
from bench.profile import BARE_WITH_TOKEN, auth_header
from bench.servers import preload
from bench.unary import GET_DRIVER, GRPC_HEADERS, get_driver_body

BARE_GRPCIO = "bare, grpcio client"
BARE_WITH_TOKEN_GRPCIO = "bare, token sent, grpcio client"
AUTH_GRPCIO = "+auth, grpcio client"
#: (label, server kind, extra arguments), each adding one concern to the one before.
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("bare", "bare", []),
    # The floor with our server options (message limits, keepalive, connection age): what
    # grpc core does more per call for them, apart from any Python of ours.
    ("bare+options", "bare", ["--server-options"]),
    # The floor answering prebuilt bytes (no response encoding): the ceiling for a reply
    # served as bytes already encoded.
    ("bare bytes", "bare", ["--raw"]),
    # The floor receiving the production client's token header (and ignoring it): what grpc
    # core and grpc.aio pay to carry it. h2load, like nghttp2 everywhere, never indexes an
    # `authorization` header in HPACK: every call carries the whole token, Huffman-coded
    # (grpc core's client sends it uncoded: the "grpcio client" rows below).
    (BARE_WITH_TOKEN, "bare", []),
    # Our services registered grpc.aio's way, each method by name: every registered method
    # costs each call (its own pending request in grpc.aio's accept loop).
    ("servicer, registered", "chain", ["--interceptors=", "--registered"]),
    ("servicer", "chain", ["--interceptors="]),
    ("+pipeline", "chain", ["--interceptors=pipeline"]),
    ("+request id", "chain", ["--interceptors=pipeline,request_id"]),
    ("+metrics", "chain", ["--interceptors=pipeline,request_id,metrics"]),
    ("+access log", "chain", ["--interceptors=pipeline,request_id,metrics,logging"]),
    ("+auth", "chain", ["--interceptors=pipeline,request_id,metrics,logging,auth"]),
    ("full", "full", []),
    # The same with grpcio's own client (bench/grpc_load.py) instead of h2load: grpc core
    # sends `authorization` as a plain literal where nghttp2 Huffman-codes it, and neither
    # indexes it; what the token header costs the server depends on the client. The
    # client's start-up (a Python process, ~1 s) falls inside the count, the server idle:
    # compare these rows with each other.
    (BARE_GRPCIO, "bare", []),
    (BARE_WITH_TOKEN_GRPCIO, "bare", []),
    (AUTH_GRPCIO, "chain", ["--interceptors=pipeline,request_id,metrics,logging,auth"]),
]
GRPCIO_CLIENT = {BARE_GRPCIO, BARE_WITH_TOKEN_GRPCIO, AUTH_GRPCIO}
CALLS = 2_000
WARMUP_CALLS = 300
#: Fresh servers tried per count: under a load average of 10+ on two cores, h2load's calls
#: to a server under valgrind sometimes fail (connections closed); a count is never partial.
ATTEMPTS = 3


def _load(port: int, body: Path, calls: int, token: bool = False) -> None:
    argv = ["h2load", "-n", str(calls), "-c", "10", "-d", str(body)]
    for header in (*GRPC_HEADERS, auth_header()) if token else GRPC_HEADERS:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}{GET_DRIVER}")
    out = subprocess.run(
        pinned(CLIENT_CORE, argv), capture_output=True, text=True, check=False
    ).stdout
    if f"{calls} succeeded" not in out:
        raise RuntimeError(f"h2load: not every call succeeded:\n{out[-600:]}")


def _load_grpcio(
    port: int, calls: int, token: bool = False, zero: Callable[[], None] | None = None
) -> None:
    """grpcio's client calling (bench/grpc_load.py); with `zero`, the client starts and
    connects first, then `zero()` runs, then the calls: its start-up is not counted."""
    argv = [PYTHON, "-m", "bench.grpc_load", str(port), str(calls)]
    if token:
        argv.append("--token")
    if zero is not None:
        argv.append("--ready")
    pipe, merged = subprocess.PIPE, subprocess.STDOUT
    client = subprocess.Popen(
        pinned(CLIENT_CORE, argv), cwd=ROOT, stdin=pipe, stdout=pipe, stderr=merged, text=True
    )
    to_client, from_client = client.stdin, client.stdout
    if to_client is None or from_client is None:
        raise RuntimeError("grpc_load: no pipes")
    if zero is not None:
        ready = from_client.readline()
        if ready.strip() != "ready":
            client.kill()
            raise RuntimeError(f"grpc_load: not ready: {ready}{from_client.read()[-600:]}")
        zero()
    to_client.write("go\n")
    to_client.close()
    output = from_client.read()
    client.wait()

    if f"{calls} succeeded" not in output:
        raise RuntimeError(f"grpc_load: not every call succeeded:\n{output[-600:]}")


def _total_instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def _last_dump(work: Path, port: int) -> dict[int, int]:
    """Instructions of the last dump by thread (1: the main thread, the event loop). With
    `--separate-threads=yes` a dump is a file per thread (`.out.N-TT`), else one (`.out.N`)."""
    files: dict[int, dict[int, Path]] = {}
    for path in work.glob(f"callgrind-{port}.out.*"):
        dump, _, thread = path.name.rsplit(".", 1)[1].partition("-")
        files.setdefault(int(dump), {})[int(thread or 1)] = path
    return {thread: _total_instructions(path) for thread, path in files[max(files)].items()}


def counted(
    server_argv: list[str],
    work: Path,
    warm_up: Callable[[int], None],
    measured: Callable[[int], None],
    valgrind_options: Sequence[str] = (),
    threads: dict[int, int] | None = None,
    started_measured: Callable[[int, Callable[[], None]], None] | None = None,
) -> int:
    """Instructions a server (`server_argv` after `--port P`, started under callgrind on the
    server core) executes during `measured(port)`, every thread: instrumentation is switched
    on after start-up and `warm_up(port)`, zeroed, and read at the end. `threads`, if given,
    receives them by thread (split only with `--separate-threads=yes`). `started_measured`,
    if given, runs instead of `measured`, with a function that zeroes the counts again: for
    a client that starts first (a Python process) and then calls."""
    port = free_port()
    out = work / f"callgrind-{port}.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    argv += [*valgrind_options, PYTHON, "-m", "bench.servers", *server_argv, "--port", str(port)]
    with (work / f"server-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            pinned(SERVER_CORE, argv), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    control = ["callgrind_control"]
    try:
        wait_for_port(port, proc, timeout_s=300)
        warm_up(port)
        subprocess.run([*control, "-i", "on", str(proc.pid)], capture_output=True, check=True)
        warm_up(port)
        subprocess.run([*control, "-z", str(proc.pid)], capture_output=True, check=True)
        if started_measured is not None:

            def zero() -> None:
                subprocess.run([*control, "-z", str(proc.pid)], capture_output=True, check=True)

            started_measured(port, zero)
        else:
            measured(port)
        subprocess.run([*control, "-d", str(proc.pid)], capture_output=True, check=True)
        time.sleep(1)
        by_thread = _last_dump(work, port)
        if threads is not None:
            threads.update(by_thread)
        return sum(by_thread.values())
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # a loaded machine: the counts are read already
            proc.kill()
            proc.wait(30)


def count(label: str, kind: str, extra: list[str], data: Path, work: Path, body: Path) -> float:
    """Instructions per call of one server variant, over CALLS calls after a warm-up."""
    server_argv = [kind, *extra]
    if kind != "bare":
        own = work / f"data-{len(list(work.iterdir()))}"
        shutil.copytree(data, own, ignore=shutil.ignore_patterns("*.lock"))
        server_argv += ["--data-dir", str(own)]
    token = label in (BARE_WITH_TOKEN, BARE_WITH_TOKEN_GRPCIO) or any("auth" in a for a in extra)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if label in GRPCIO_CLIENT:
                total = counted(
                    server_argv,
                    work,
                    lambda port: _load_grpcio(port, WARMUP_CALLS, token),
                    lambda port: _load_grpcio(port, CALLS, token),
                    started_measured=lambda port, zero: _load_grpcio(port, CALLS, token, zero),
                )
            else:
                total = counted(
                    server_argv,
                    work,
                    lambda port: _load(port, body, WARMUP_CALLS, token),
                    lambda port: _load(port, body, CALLS, token),
                )
            break
        except RuntimeError as exc:  # h2load calls failing: a machine overloaded for a while
            if attempt == ATTEMPTS:
                raise
            print(f"  {label}: attempt {attempt} failed, a fresh server: {exc}", flush=True)
    per_call = total / CALLS
    print(f"  {label}: {per_call / 1000:.1f} k instructions per call", flush=True)
    return per_call


def run(workdir: Path, labels: list[str] | None = None, repeats: int = 3) -> dict[str, Any]:
    """Each variant `repeats` times (a fresh server each); the median counts. Counts move a
    little with timing (how many calls one loop iteration handles, the poller thread), more
    so while other work loads the machine."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind missing (Debian: valgrind)"}
    work = workdir / "instructions"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    data.mkdir(exist_ok=True)
    asyncio.run(preload(data))
    body = work / "body.bin"
    body.write_bytes(get_driver_body())
    chosen = [v for v in VARIANTS if not labels or v[0] in labels]
    runs = {
        label: sorted(count(label, kind, extra, data, work, body) for _ in range(repeats))
        for label, kind, extra in chosen
    }
    per_call = {label: counts[len(counts) // 2] for label, counts in runs.items()}
    floor = per_call.get("bare")
    for label, value in per_call.items():
        versus = f", {100 * (value / floor - 1):+.1f} % vs bare" if floor else ""
        print(f"  median {label}: {value / 1000:.1f} k{versus}")
    return {
        "calls": CALLS,
        "repeats": repeats,
        "instructions_per_call": per_call,
        "runs": runs,
        "vs_bare": {k: v / floor - 1 for k, v in per_call.items()} if floor else {},
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        run(Path(tmp), sys.argv[1:] or None)
