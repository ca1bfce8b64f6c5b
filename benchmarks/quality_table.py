"""The markdown table of bench_quality.py results, read against issue 14's targets.

    .venv/bin/python benchmarks/quality_table.py results/quality_full.json [more.json ...]

Later files replace a (set, configuration) of earlier ones. Per set and configuration: the test metric (mean +- sd over
the seeds) at each budget, the predicted / true foreground fraction at the last budget (binary sets), the first
evaluated step at which the mean curve reaches the old defaults' mean at 100 steps, the median step at which a run
first reaches 0.97 of its final value (steps: independent of the machine's load) and the median seconds to it. Then
the targets: new against the best BiaPy-equivalent rate at every budget, the old 100-step value in at most 50 steps,
the foreground fraction within 10 %."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def merged(paths: list[str]) -> tuple[dict, list[int]]:
    out: dict = {}
    budgets: list[int] = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        budgets = data["budgets"]
        for set_name, per in data["results"].items():
            out.setdefault(set_name, {}).update(per)
    return out, budgets


def mean_curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([c["step"] for c in runs[0]["curve"]])
    return steps, np.mean([[c["metric"] for c in r["curve"]] for r in runs], axis=0)


def first_step(steps, values, level) -> int | None:
    hit = np.flatnonzero(values >= level - 1e-12)
    return int(steps[hit[0]]) if len(hit) else None


def steps_to_97(run: dict) -> int:
    final = run["curve"][-1]["metric"]
    return next(c["step"] for c in run["curve"] if c["metric"] >= 0.97 * final)


def report(results: dict, budgets: list[int]) -> str:
    head = ["set", "configuration", *[f"{b} steps" for b in budgets], "fg predicted / true", "steps to old's 100"]
    head += ["steps to 0.97 of final", "s to 0.97"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    checks = []
    for set_name, per in results.items():
        old = per.get("old")
        level = old["summary"]["at_100"][0] if old else None
        for config, r in per.items():
            s, runs = r["summary"], r["runs"]
            cells = [f"{s[f'at_{b}'][0]:.3f} +- {s[f'at_{b}'][1]:.3f}" for b in budgets]
            frac = f"{s['fraction']:.3f} / {s['truth']:.3f}" if "fraction" in s else "-"
            reach = first_step(*mean_curve(runs), level) if level is not None else None
            to97 = int(np.median([steps_to_97(run) for run in runs]))
            row = [set_name, config, *cells, frac, str(reach or f"not by {budgets[-1]}"), str(to97)]
            lines.append("| " + " | ".join([*row, f"{s['seconds_to_97']:.0f}"]) + " |")
        if "new" in per:
            new = per["new"]["summary"]
            biapy = [per[c]["summary"] for c in per if c.startswith("biapy")]
            for b in budgets if biapy else ():
                best = max(x[f"at_{b}"][0] for x in biapy)
                checks.append(
                    f"{set_name} {b} steps: new {new[f'at_{b}'][0]:.3f} vs best BiaPy {best:.3f}: "
                    + ("beats" if new[f"at_{b}"][0] > best else "behind")
                )
            if level is not None:
                reach = first_step(*mean_curve(per["new"]["runs"]), level)
                checks.append(
                    f"{set_name}: new reaches old's 100-step {level:.3f} at step {reach}: "
                    + ("within half" if reach is not None and reach <= 50 else "not within half")
                )
            if "fraction" in new:
                ratio = new["fraction"] / new["truth"]
                checks.append(
                    f"{set_name}: foreground predicted/true {ratio:.2f}: "
                    + ("within 10 %" if abs(ratio - 1) <= 0.1 else "outside 10 %")
                )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks)


if __name__ == "__main__":
    print(report(*merged(sys.argv[1:])))
