"""`fmrilm bench [NAME ...]`: run the benchmarks under eval/ (each `bench_<name>.py`), one fresh process each.

Each benchmark prints its own figures and ratios against a baseline run in the same process; BENCHMARKS.md
records them with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import time

import fmrilm.eval as eval_pkg


def available() -> list[str]:
    """Benchmark names: the `bench_<name>` modules of fmrilm.eval."""
    names = [m.name for m in pkgutil.iter_modules(eval_pkg.__path__)]
    return sorted(n.removeprefix("bench_") for n in names if n.startswith("bench_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs=argparse.REMAINDER,
        help=f"benchmarks to run (default: all): {', '.join(available())}; options after a single name go "
        "to that benchmark (`fmrilm bench model --what memory`)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def run(args: argparse.Namespace) -> int:
    from fmrilm.errors import FmriInputError

    names = available()
    if args.list:
        print("\n".join(names))
        return 0
    given = list(args.names or [])
    first_option = next((i for i, a in enumerate(given) if a.startswith("-")), len(given))
    chosen, extra = given[:first_option] or names, given[first_option:]
    if extra and len(chosen) != 1:
        raise FmriInputError(
            f"Options {' '.join(extra)} can go to one benchmark only, not to {len(chosen)}",
            fix="name one benchmark before its options, e.g. `fmrilm bench model --what memory`",
        )
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise FmriInputError(
            f"Unknown benchmark {', '.join(unknown)}", fix=f"choose among {', '.join(names)}"
        )
    failed = []
    for name in chosen:
        shown = " ".join([f"python -m fmrilm.eval.bench_{name}", *extra])
        print(f"\n=== fmrilm bench {name}  ({shown})", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"fmrilm.eval.bench_{name}", *extra])
        print(f"=== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
