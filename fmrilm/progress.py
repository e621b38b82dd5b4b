"""Progress of long jobs, wherever their output goes.

On a terminal, a tqdm bar. Otherwise (output redirected to a file: nohup, SLURM, a CI log) one plain line every
N seconds with the count, the loss (or whatever the job reports with ``set_postfix``), the rate and the estimated
time left, plus a last line when the job ends::

    14:02:31 stage 1 (tokenizer): step 120/1000 (12%), loss 0.512, rec 0.430, 0.85 steps/s, about 17 min 15 s left

N is ``FMRILM_PROGRESS_EVERY`` seconds (default 30; 0 writes a line at every update); training commands also
take ``--progress-every SECONDS``. `progress` is a drop-in for the ``tqdm(...)`` calls of this package: the same
arguments, ``update``, ``set_postfix``, iteration and ``with``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from fmrilm.errors import FmriInputError

#: seconds between progress lines when the output is not a terminal
ENV_EVERY = "FMRILM_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def progress_every() -> float:
    """Seconds between progress lines: ``$FMRILM_PROGRESS_EVERY``, else 30."""
    text = os.environ.get(ENV_EVERY, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise FmriInputError(
            f"{ENV_EVERY}='{text}' is not a number of seconds", fix=f"set {ENV_EVERY} to e.g. 30 (or 0)"
        )
    return seconds


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool | None = None,
    file: Any = None,
    every: float | None = None,
    **tqdm_kwargs: Any,
) -> Any:
    """A progress display over ``iterable`` (or ``total`` updates): tqdm on a terminal, log lines elsewhere.

    ``disable`` is tqdm's: True shows nothing; None or False show a bar on a terminal and log lines every
    ``every`` seconds (default `progress_every`) when the output is a file or a pipe.
    """
    stream = sys.stderr if file is None else file
    if disable is True:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=True)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=file,
            disable=False,
            **tqdm_kwargs,
        )
    return LogProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, file=file, every=every)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """The progress of a job as plain lines (the subset of tqdm's interface this package uses)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        file: Any = None,
        every: float | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.n = self.initial = self._last_n = int(initial)
        self.desc = desc
        self.unit = unit
        self.file = file
        self.every = progress_every() if every is None else float(every)
        self.postfix: dict[str, Any] = {}
        self.start = self._last = time.monotonic()
        self.closed = False

    # -- tqdm's interface
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress display has no iterable")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._write(self._line(now))
            self._last, self._last_n = now, self.n

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._last_n:  # the last line says where the job ended and how long it took
            now = time.monotonic()
            self._write(self._line(now, final=True))

    # -- the line
    def _line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.start, 1e-9)
        done = self.n - self.initial
        rate = done / elapsed
        units = _plural(self.unit)
        count = f"{self.unit} {self.n}"
        if self.total:
            count += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        parts = [count]
        parts += [f"{k} {_short(v)}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.3g} {units}/s")
        if final:
            parts.append(f"{done} {units} in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        stamp = time.strftime("%H:%M:%S")
        head = f"{stamp} {self.desc}: " if self.desc else f"{stamp} "
        return head + ", ".join(parts)

    def _write(self, text: str) -> None:
        stream = sys.stderr if self.file is None else self.file  # whatever stderr is now (it may be replaced)
        print(text, file=stream, flush=True)


def _plural(unit: str) -> str:
    if unit.endswith(("s", "sh", "ch", "x")):
        return unit + "es"
    return unit + "s"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s} s"
    return f"{s} s"
