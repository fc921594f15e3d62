"""`python -m bench.report`: Markdown tables from bench/results/*.json (for BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS


def _load(name: str, results: Path) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def unary_table(u: dict[str, Any]) -> list[str]:
    lines = [
        "| server | clients | RPS (median) | RPS spread | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| errors | server CPU | CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, variant in u["variants"].items():
        for c, p in variant["points"].items():
            lines.append(
                f"| {name} | {c} | {p['rps']:,.0f} | {p['rps_min']:,.0f}-{p['rps_max']:,.0f} "
                f"| {p['p50_ms']:.2f} | {p['p90_ms']:.2f} | {p['p99_ms']:.2f} | {p['p999_ms']:.2f} "
                f"| {p['errors']} | {p['server_cpu_pct']:.0f} % | {p['cpu_us_per_call']:.0f} |"
            )
    return lines


def wire_table(u: dict[str, Any]) -> list[str]:
    lines = ["| server | body bytes/response | header bytes/response (h2load) |", "|---|---:|---:|"]
    for name, variant in u["variants"].items():
        p = variant["points"][str(u["concurrency"][0])]
        lines.append(
            f"| {name} | {variant['verified']['wire_bytes']} "
            f"| {p.get('header_bytes_per_response', 0):.0f} |"
        )
    return lines


def batch_table(b: dict[str, Any]) -> list[str]:
    lines = [
        "| ids per GetDrivers | calls/s | lookups/s | lookups per CPU-second | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size, p in b.items():
        if not isinstance(p, dict):
            continue
        lines.append(
            f"| {size} | {p['rps']:,.0f} | {p['lookups_per_s']:,.0f} "
            f"| {p['lookups_per_cpu_s']:,.0f} | {p['p99_ms']:.2f} | {p['errors']} |"
        )
    return lines


def profile_table(pr: dict[str, Any]) -> list[str]:
    lines = [
        "| server at 100 clients | RPS (median) | spread | CPU µs/call | vs floor |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row['step']} | {row['rps']:,.0f} | {row['spread_pct']:.0f} % "
        f"| {row['cpu_us_per_call']:.0f} | {row['vs_floor_pct']:+.0f} % |"
        for row in pr["steps"]
    ]
    return lines


def paired_table(pr: dict[str, Any]) -> list[str]:
    paired = pr.get("paired")
    if not paired:
        return []
    lines = [
        f"Paired, {paired['rounds']} rounds at {paired['clients']} clients (each round loads "
        "every server in turn):",
        "",
        "| server | RPS (median) | CPU µs/call | RPS vs floor, median of rounds | rounds range "
        "| vs the floor sent the same request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in paired["servers"].items():
        low, high = row["rps_vs_floor_range"]
        lines.append(
            f"| {label} | {row['rps']:,.0f} | {row['cpu_us_per_call']:.0f} "
            f"| {100 * (row['rps_vs_floor_median'] - 1):+.1f} % "
            f"| {100 * (low - 1):+.1f} … {100 * (high - 1):+.1f} % "
            f"| {100 * (row.get('rps_vs_same_request_floor_median', 1) - 1):+.1f} % |"
        )
    return [*lines, ""]


def ingest_table(i: dict[str, Any]) -> list[str]:
    """Each case, and for the one-message-per-update cases its ratio to the bare floor and to
    its store's durable floor (bench/durable_floor.py) of the same stream count."""
    lines = [
        "| store / path | updates/s stored (median) | min-max | per CPU-second | server CPU "
        "| all stored | ratio to bare floor | ratio to durable floor |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    cases = i["cases"]

    def versus(floor: str, key: str) -> str:
        store, path = key.split("/", 1)
        if floor == "durable":
            if store == "bare":
                return "-"
            floor = "postgres-durable-floor" if store.startswith("postgres") else "durable-floor"
        base = cases.get(f"{floor}/{path}")
        if base is None or not path.startswith("upload_"):
            return "-"
        return f"{cases[key]['updates_per_s'] / base['updates_per_s']:.3f}"

    for key, c in cases.items():
        lines.append(
            f"| {key} | {c['updates_per_s']:,.0f} | {c['min']:,.0f}-{c['max']:,.0f} "
            f"| {c['updates_per_cpu_s']:,.0f} | {c['server_cpu_pct']:.0f} % | {c['all_stored']} "
            f"| {versus('bare', key)} | {versus('durable', key)} |"
        )
    return lines


def fanout_table(f: dict[str, Any]) -> list[str]:
    lines = [
        "| server | watchers | ack→received p50 | ack→received p99 | send→received p50 "
        "| send→received p99 | server CPU µs per delivery |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, server in (("cases", "ours"), ("floor_cases", "bare grpc.aio")):
        for w, c in f.get(key, {}).items():
            lines.append(
                f"| {server} | {w} | {c['ack_to_received_p50_ms']:.2f} ms "
                f"| {c['ack_to_received_p99_ms']:.2f} ms "
                f"| {c['send_to_received_p50_ms']:.2f} ms | {c['send_to_received_p99_ms']:.2f} ms "
                f"| {c['server_cpu_us_per_delivery']:.0f} |"
            )
    return lines


def instructions_table(n: dict[str, Any]) -> list[str]:
    if "skipped" in n:
        return [f"skipped: {n['skipped']}"]
    lines = ["| server | k instructions per call (median) | vs bare |", "|---|---:|---:|"]
    for label, value in n["instructions_per_call"].items():
        versus = n["vs_bare"].get(label)
        lines.append(
            f"| {label} | {value / 1000:.1f} | "
            + (f"{100 * versus:+.1f} % |" if versus is not None else "- |")
        )
    return lines


def workers_table(w: dict[str, Any]) -> list[str]:
    if "skipped" in w:
        return [f"skipped: {w['skipped']}"]
    lines = ["| workers | GetDriver RPS | UploadLocations updates/s |", "|---:|---:|---:|"]
    for n, c in w["cases"].items():
        lines.append(f"| {n} | {c['getdriver_rps']:,.0f} | {c['upload_updates_per_s']:,.0f} |")
    lines.append(f"| 2 / 1 | x{w['getdriver_scaling']:.2f} | x{w['upload_scaling']:.2f} |")
    return lines


def sessions_table(s: dict[str, Any]) -> list[str]:
    def kib(key: str) -> str:
        value = s.get(key)
        return f"{value / 1024:.1f}" if value else "-"

    return [
        "| sessions | heartbeat RTT p50 | p99 | KiB per idle session (ours / bare grpc.aio), "
        "500 per connection | a connection each | tried | held | answered after "
        "| RSS at max |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['sessions']:.0f} | {s['heartbeat_rtt_p50_ms']:.1f} ms "
        f"| {s['heartbeat_rtt_p99_ms']:.1f} ms "
        f"| {kib('bytes_per_idle_session')} / {kib('floor_bytes_per_idle_session')} "
        f"| {kib('bytes_per_session_own_connection')} / "
        f"{kib('floor_bytes_per_session_own_connection')} "
        f"| {s['tried']:.0f} | {s['held']:.0f} | {s['answered_after']:.0f} "
        f"| {s['server_rss_mb_at_max']:.0f} MiB |",
    ]


def main(argv: list[str] | None = None) -> int:
    results = Path(argv[0]) if argv else RESULTS
    out: list[str] = []
    for name, render in (
        ("unary", unary_table),
        ("unary", wire_table),
        ("batch", batch_table),
        ("profile", paired_table),
        ("profile", profile_table),
        ("ingest", ingest_table),
        ("instructions", instructions_table),
        ("fanout", fanout_table),
        ("sessions", sessions_table),
        ("workers", workers_table),
    ):
        data = _load(name, results)
        if data is not None:
            out += [f"### {name}", "", *render(data), ""]
    machine = _load("machine", results)
    if machine is not None:
        out += ["```", json.dumps(machine, indent=1), "```"]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
