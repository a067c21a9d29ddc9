"""A lone user's run on the batched server against the one-by-one server, over several fresh pairs of servers.

`benchmarks/classroom.py` compares the two servers' lone runs in one pair of processes. Measured on 2 cores, the
same comparison gives 0.97-1.10 from one pair of processes to the next (30 alternating runs each): a process keeps
its own speed for its whole life (where its memory landed, which core it got), so one pair cannot tell a 3%
difference from luck. This script starts ``--servers`` fresh pairs, one after the other, times ``--pairs``
alternating lone runs on each pair (distinct seeds: never from the cache), and pools the pairs' ratios.

    python benchmarks/lone_run.py                       # 4 pairs of servers x 20 runs each
    python benchmarks/lone_run.py --servers 2 --pairs 5 # a quick check
    python benchmarks/lone_run.py --json out.json

Target (issue: a class of 30 at once): a lone run within 5% of the one-by-one server's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _server import free_port, start_server
from classroom import lone_pairs, new_page, pair_ratios, quartiles

ENV = {"batched": {}, "one_by_one": {"SDVIZ_BATCH": "1", "SDVIZ_CONCURRENCY": "1"}}


def one_pair_of_servers(model: str, pairs: int, guidance: float, steps: int, seed0: int,
                        batched_env: dict[str, str]) -> dict:
    temp = tempfile.mkdtemp(prefix="sdviz-lone-")
    ports = {name: free_port() for name in ENV}
    env = {**ENV, "batched": batched_env}
    servers = {name: start_server(model, ports[name], temp, env[name]) for name in ENV}
    try:
        pages = {name: new_page(f"http://127.0.0.1:{ports[name]}/", True) for name in ENV}
        lone = lone_pairs(pages, pairs, guidance, steps, seed0)
    finally:
        for server in servers.values():
            server.terminate()
    ratios = pair_ratios(lone)
    return {name + "_s": statistics.median(r["total_s"] for r in lone[name]) for name in ENV} | {
        "median_pair_ratio": statistics.median(ratios), "ratios": [round(r, 4) for r in ratios]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--servers", type=int, default=4, help="fresh pairs of servers, one after the other")
    parser.add_argument("--pairs", type=int, default=20, help="alternating lone runs on each pair of servers")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batched-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the batched server only, e.g. SDVIZ_RUN_CACHE_MB=0")
    args = parser.parse_args()
    batched_env = dict(kv.split("=", 1) for kv in args.batched_env)
    report: dict = {"model": args.model, "servers": [], "steps": args.steps, "guidance": args.guidance,
                    "batched_env": batched_env}
    for i in range(args.servers):
        result = one_pair_of_servers(args.model, args.pairs, args.guidance, args.steps, 800_000 + 1000 * i,
                                     batched_env)
        report["servers"].append(result)
        print(f"pair of servers {i + 1}: batched {result['batched_s']:.3f} s, one by one {result['one_by_one_s']:.3f} s,"
              f" median of {args.pairs} pair ratios {result['median_pair_ratio']:.3f}", flush=True)
    pooled = [r for result in report["servers"] for r in result["ratios"]]
    report["pooled_median_ratio"] = statistics.median(pooled)
    report["pooled_quartiles"] = quartiles(pooled)
    report["within_5pct"] = report["pooled_median_ratio"] <= 1.05
    print(f"all {len(pooled)} pairs: median ratio {report['pooled_median_ratio']:.3f} "
          f"(quartiles {report['pooled_quartiles']}); per pair of servers "
          f"{[round(r['median_pair_ratio'], 3) for r in report['servers']]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["within_5pct"] else 1)


if __name__ == "__main__":
    main()
