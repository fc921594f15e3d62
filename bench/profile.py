"""Our chain against the bare floor at 100 clients: what each interceptor costs (servers built
with growing prefixes of the production chain) and where the CPU goes (py-spy)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE, LoadResult, h2load, pinned, server, summarize
from bench.servers import BENCH_SECRET, preload
from bench.unary import GET_DRIVER, GRPC_HEADERS, get_driver_body

CLIENTS = 100
BARE_WITH_TOKEN = "bare, token sent"
#: The production pipeline with its concerns added one at a time; "full" is
#: server.start_server itself.
STEPS: list[tuple[str, str, str]] = [
    ("bare floor (dict, no interceptors)", "bare", ""),
    ("our servicer, no interceptors", "chain", ""),
    ("+ pipeline (recovery, decoding)", "chain", "pipeline"),
    ("+ request_id", "chain", "pipeline,request_id"),
    ("+ access log", "chain", "pipeline,request_id,logging"),
    ("+ metrics (= production chain, auth off)", "chain", "pipeline,request_id,logging,metrics"),
    (
        "+ auth (service token on every call)",
        "chain",
        "pipeline,request_id,logging,auth,metrics",
    ),
    ("full: server.start_server (production)", "full", ""),
    (
        "production chain, log level WARNING",
        "chain-warn",
        "pipeline,request_id,logging,metrics",
    ),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def auth_header() -> str:
    from driver_service.security import TokenIssuer

    token = TokenIssuer.from_secret(BENCH_SECRET).issue_service(["drivers:read"])
    return f"authorization: Bearer {token}"


def server_args(kind: str, chain: str, data: Path) -> tuple[str, list[str]]:
    if kind == "bare":
        return "bare", []
    if kind == "full":
        return "full", ["--data-dir", str(data)]
    args = ["--data-dir", str(data), "--interceptors", chain]
    if kind == "chain-warn":
        args += ["--log-level", "WARNING"]
    return "chain", args


def costs(workdir: Path, data: Path, *, repeats: int, duration_s: float) -> list[dict[str, Any]]:
    body = get_driver_body()
    rows = []
    for label, kind, chain in STEPS:
        real_kind, args = server_args(kind, chain, data)
        headers = (*GRPC_HEADERS, auth_header()) if "auth" in chain.split(",") else GRPC_HEADERS
        with server(real_kind, *args, workdir=workdir) as srv:
            url = f"http://127.0.0.1:{srv.port}{GET_DRIVER}"
            h2load(
                url, clients=CLIENTS, duration_s=1, server_pid=srv.pid, body=body, headers=headers
            )
            runs: list[LoadResult] = [
                h2load(
                    url,
                    clients=CLIENTS,
                    duration_s=duration_s,
                    server_pid=srv.pid,
                    body=body,
                    headers=headers,
                )
                for _ in range(repeats)
            ]
        point = summarize(runs)
        rows.append({"step": label, "interceptors": chain, **point})
        print(
            f"  {label}: {point['rps']:.0f} rps, {point['cpu_us_per_call']:.0f} us/call, "
            f"errors {point['errors']}"
        )
    floor = rows[0]["rps"]
    for row in rows:
        row["vs_floor_pct"] = 100 * (row["rps"] / floor - 1)
    return rows


#: The servers of the paired comparison: the floor (and the floor answering prebuilt bytes),
#: production as `serve` runs it with a token on every call (the whole chain), then with
#: each concern off in turn. (label, kind, extra arguments, whether calls carry a token)
_CHAIN = ("pipeline", "request_id", "logging", "auth", "metrics")
PAIRED: list[tuple[str, str, list[str], bool]] = [
    ("bare", "bare", [], False),
    ("bare, bytes", "bare", ["--raw"], False),
    # The floor sent the same request as production (the service token included, ignored):
    # grpc core's work to receive the header is the runtime's, not the chain's.
    (BARE_WITH_TOKEN, "bare", [], True),
    ("production (auth on)", "chain", ["--interceptors", ",".join(_CHAIN)], True),
    ("full: serve --insecure (auth off)", "full", [], False),
    ("full, --access-log errors", "full", ["--access-log", "errors"], False),
    *[
        (
            f"production, {name} off",
            "chain",
            ["--interceptors", ",".join(c for c in _CHAIN if c != name)],
            name != "auth",
        )
        for name in ("request_id", "logging", "metrics")
    ],
]


def paired(workdir: Path, data: Path, *, rounds: int, duration_s: float) -> dict[str, Any]:
    """Production against the floor, measured in turns: every server runs at once (idle
    but for its turn, all on the server core), and each round loads each in turn, so slow
    drifts of this shared machine hit all alike. Reports each server's median RPS and CPU
    per call, and the median over rounds of each round's ratio to the floor."""
    body = get_driver_body()
    with_token = (*GRPC_HEADERS, auth_header())
    with contextlib.ExitStack() as stack:
        servers = []
        headers: dict[str, tuple[str, ...]] = {}
        for n, (label, kind, extra, token) in enumerate(PAIRED):
            args: list[str] = list(extra)
            if kind != "bare":  # each server its own copy of the data (the store is locked)
                own = workdir / f"paired-data-{n}"
                shutil.rmtree(own, ignore_errors=True)
                shutil.copytree(data, own, ignore=shutil.ignore_patterns("*.lock"))
                args += ["--data-dir", str(own)]
            servers.append((label, stack.enter_context(server(kind, *args, workdir=workdir))))
            headers[label] = with_token if token else tuple(GRPC_HEADERS)
        urls = {label: f"http://127.0.0.1:{srv.port}{GET_DRIVER}" for label, srv in servers}
        for label, srv in servers:  # warm-up
            h2load(
                urls[label],
                clients=CLIENTS,
                duration_s=1,
                server_pid=srv.pid,
                body=body,
                headers=headers[label],
            )
        runs: dict[str, list[LoadResult]] = {label: [] for label, _ in servers}
        for _ in range(rounds):
            for label, srv in servers:
                runs[label].append(
                    h2load(
                        urls[label],
                        clients=CLIENTS,
                        duration_s=duration_s,
                        server_pid=srv.pid,
                        body=body,
                        headers=headers[label],
                    )
                )
    floor, same_request = runs["bare"], runs[BARE_WITH_TOKEN]
    result: dict[str, Any] = {"clients": CLIENTS, "rounds": rounds, "servers": {}}
    for label, got in runs.items():
        ratios = sorted(r.rps / f.rps for r, f in zip(got, floor, strict=True))
        # Against the floor sent the same request (with the token when `label` gets one).
        twin = same_request if headers[label] != tuple(GRPC_HEADERS) else floor
        same = sorted(r.rps / f.rps for r, f in zip(got, twin, strict=True))
        cpu_ratios = sorted(
            r.cpu_us_per_call / f.cpu_us_per_call for r, f in zip(got, floor, strict=True)
        )
        point = summarize(got)
        result["servers"][label] = {
            **point,
            "rps_vs_floor_median": ratios[len(ratios) // 2],
            "rps_vs_floor_range": (ratios[0], ratios[-1]),
            "cpu_per_call_vs_floor_median": cpu_ratios[len(cpu_ratios) // 2],
            "rps_vs_same_request_floor_median": same[len(same) // 2],
            "rps_vs_same_request_floor_range": (same[0], same[-1]),
            "rounds_rps": [r.rps for r in got],
        }
        print(
            f"  paired {label}: {point['rps']:.0f} rps, {point['cpu_us_per_call']:.0f} us/call, "
            f"{100 * (ratios[len(ratios) // 2] - 1):+.1f} % vs floor "
            f"(rounds {100 * (ratios[0] - 1):+.1f}..{100 * (ratios[-1] - 1):+.1f}); "
            f"{100 * (same[len(same) // 2] - 1):+.1f} % vs the floor sent the same request"
        )
    return result


def py_spy(kind: str, args: list[str], workdir: Path, seconds: int = 6) -> dict[str, Any]:
    """Sample the server under 100-client load; return the hottest functions and files."""
    if shutil.which("py-spy") is None and not Path(shutil.which("python") or "").exists():
        return {"error": "py-spy missing"}
    spy = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
    spy = spy if Path(spy).exists() else (shutil.which("py-spy") or "py-spy")
    body = get_driver_body()
    out = workdir / f"pyspy-{kind}.txt"
    with server(kind, *args, workdir=workdir) as srv:
        url = f"http://127.0.0.1:{srv.port}{GET_DRIVER}"
        load = threading.Thread(
            target=h2load,
            kwargs={
                "url": url,
                "clients": CLIENTS,
                "duration_s": seconds + 2,
                "server_pid": srv.pid,
                "body": body,
                "headers": GRPC_HEADERS,
            },
        )
        load.start()
        proc = subprocess.run(
            pinned(
                CLIENT_CORE,
                [
                    spy,
                    "record",
                    "--pid",
                    str(srv.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        load.join()
    if proc.returncode != 0 or not out.exists():
        return {"error": proc.stderr[-500:]}
    return summarize_profile(out.read_text())


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Inclusive and self sample shares per function, and inclusive shares per source file
    of ours (driver_service/...), from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    innermost: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        names, ours = set(), set()
        label = ""
        ours_label = "(grpc/asyncio, outside our code)"
        for frame in frames:
            m = _FRAME.match(frame.strip())
            func, file = (m.group("func"), m.group("file")) if m else (frame, "")
            short = file.split("site-packages/")[-1].split("src/")[-1]
            label = f"{func} ({short})"
            names.add(label)
            if "driver_service/" in file:
                ours.add(short)
                if "cli/serve_command" not in file:
                    ours_label = label
        for name in names:
            inclusive[name] += count
        self_[label] += count
        innermost[ours_label] += count
        for name in ours:
            files[name] += count
    pct = lambda n: round(100 * n / max(total, 1), 1)  # noqa: E731
    return {
        "samples": total,
        "top_inclusive": [(k, pct(v)) for k, v in inclusive.most_common(top)],
        "top_self": [(k, pct(v)) for k, v in self_.most_common(top)],
        "our_files_inclusive": [(k, pct(v)) for k, v in files.most_common(top)],
        # Each sample charged to the innermost function of ours on its stack (with whatever
        # library code it called): where our own per-call work goes.
        "charged_to_our_functions": [(k, pct(v)) for k, v in innermost.most_common(top)],
    }


def run(
    workdir: Path, *, repeats: int = 3, duration_s: float = 3.0, spy: bool = True
) -> dict[str, Any]:
    data = workdir / "profile-data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(preload(data))
    result: dict[str, Any] = {
        "clients": CLIENTS,
        "paired": paired(workdir, data, rounds=max(3, 2 * repeats + 1), duration_s=duration_s),
        "steps": costs(workdir, data, repeats=repeats, duration_s=duration_s),
    }
    if spy:
        result["py_spy"] = {
            "bare": py_spy("bare", [], workdir),
            "full": py_spy("full", ["--data-dir", str(data)], workdir),
        }
    return result
