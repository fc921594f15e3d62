"""The chart in BENCHMARKS.md: RPS and p99 against concurrency for each server, beside the
seed's published Go figures (measured on other hardware: 4 vCPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The seed's claim for Go on 4 vCPU (not measured here).
SEED = {"rps": [12_000, 45_000, 72_000, 91_000], "p99_ms": [2.1, 3.8, 5.2, 8.9]}
LABELS = {
    "ours": "ours, full chain (plaintext)",
    "ours_tls": "ours, full chain (TLS)",
    "bare": "bare grpc.aio floor",
    "fastapi": "FastAPI + uvicorn (HTTP/1.1 JSON)",
}


def draw(unary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = unary["concurrency"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, variant in unary["variants"].items():
        points = [variant["points"][str(c)] for c in conc]
        label = LABELS.get(name, name)
        left.plot(conc, [p["rps"] for p in points], marker="o", label=label)
        right.plot(conc, [p["p99_ms"] for p in points], marker="o", label=label)
    if conc == [10, 50, 100, 200]:
        seed_label = "seed's claim: Go, 4 vCPU (other hardware)"
        left.plot(conc, SEED["rps"], "k--", marker="x", label=seed_label)
        right.plot(conc, SEED["p99_ms"], "k--", marker="x", label=seed_label)
    left.set(
        title="GetDriver throughput (server on 1 core)",
        xlabel="concurrent clients",
        ylabel="requests/s",
        yscale="log",
    )
    right.set(title="GetDriver p99 latency", xlabel="concurrent clients", ylabel="ms", yscale="log")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
