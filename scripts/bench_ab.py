"""A/B the job queue's figures of this checkout against other checkouts, alternating.

Each round runs this checkout's `scripts/bench_queue.py --runs 1` once on every tree's
delta_actors (this one first, then each `--baseline DIR` in the order given), the order
rotated from one round to the next so that no tree always runs first or last. The
benchmark's code is the same for all; only the package differs: each run imports its
tree's delta_actors (checked before the first round: a process started as the runs are
says which package it imports) and starts a throwaway cluster of its own, migrated by
that tree's migrations. A baseline is a checkout whose package has the API the benchmark
uses (`Client`, `Worker`, `migrations.migrate`, `throwaway_cluster`), such as
`git worktree add /tmp/base COMMIT`.

Reports, per figure (bulk insert, drain at concurrency 10 and 100 and the worker's CPU
per drained job in each, enqueue-to-start latency p50/p99), every round's value, the
median per tree and, for each baseline, this checkout's median over the baseline's
(1.05: this checkout's figure is 5 % higher) and, in brackets, the median of the rounds'
own ratios (each round's two runs ran minutes apart at most, so a slow spell of the
machine weighs on both). On a noisy machine quote several rounds, never one run.

Usage: python scripts/bench_ab.py --baseline /tmp/base [--baseline DIR ...] [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import with_package_of

HERE = Path(__file__).resolve().parent.parent


def check_imports(tree: Path) -> None:
    """Fail unless a run on `tree` imports `tree`'s delta_actors: the path of `-c` from the
    scripts folder is a script's there (its folder first, then PYTHONPATH)."""
    argv = [sys.executable, "-c", "import delta_actors; print(delta_actors.__file__)"]
    env, scripts = with_package_of(tree), HERE / "scripts"
    done = subprocess.run(argv, cwd=scripts, env=env, capture_output=True, text=True, check=False)
    imported = Path(done.stdout.strip()).resolve() if done.returncode == 0 else None
    if imported is None or not imported.is_relative_to(tree):
        raise SystemExit(f"a run in {tree} imports {imported or done.stderr.strip()}, not its own")


def run_once(tree: Path, out: Path, drain: int) -> dict[str, float]:
    """One run of this checkout's `bench_queue.py --runs 1` on `tree`'s package; its medians."""
    argv = [sys.executable, str(HERE / "scripts" / "bench_queue.py"), "--runs", "1",
            "--drain", str(drain), "--out", str(out)]  # fmt: skip
    env = with_package_of(tree)
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_queue.py on {tree} failed:\n{done.stderr[-3000:]}")
    medians: dict[str, float] = json.loads(out.read_text())["median"]
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="append", required=True, metavar="DIR")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--drain", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--out", default="bench-results/ab.json")
    args = parser.parse_args()
    trees = [HERE, *(Path(b).resolve() for b in args.baseline)]
    for tree in trees:
        if not (tree / "delta_actors" / "__init__.py").is_file():
            raise SystemExit(f"{tree} has no delta_actors package: give a checkout's root")
        check_imports(tree)

    runs: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = trees[round_ % len(trees) :] + trees[: round_ % len(trees)]
            for tree in order:
                medians = run_once(tree, Path(scratch) / "queue.json", args.drain)
                for name, value in medians.items():
                    runs[str(tree)].setdefault(name, []).append(value)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    names = list(runs[str(HERE)])
    median = {
        t: {n: statistics.median(v) for n, v in figures.items()} for t, figures in runs.items()
    }

    def paired(name: str, tree: Path) -> float:
        """The median over rounds of this checkout's figure over `tree`'s in that round."""
        pairs = zip(runs[str(HERE)][name], runs[str(tree)][name], strict=True)
        return statistics.median(ours / theirs for ours, theirs in pairs)

    for tree in trees:
        print(f"\n{tree}{' (this checkout)' if tree == HERE else ''}")
        for name in names:
            values = runs[str(tree)].get(name)
            if not values:
                print(f"  {name:<32}{'(not reported)':>12}")
                continue
            ours, theirs = median[str(HERE)][name], median[str(tree)][name]
            ratio = (
                "" if tree == HERE else f"this / it {ours / theirs:.3f} ({paired(name, tree):.3f})"
            )
            shown = ", ".join(f"{v:,.1f}" for v in values)
            print(f"  {name:<32}{theirs:>12,.1f}  {ratio:<23} [{shown}]")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"trees": [str(t) for t in trees], "runs": runs,
                               "median": median}, indent=2))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
