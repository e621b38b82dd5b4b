"""Long jobs report progress wherever their output goes: a bar on a terminal, log lines in a file (nohup, SLURM)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fmrilm.errors import FmriInputError
from fmrilm.progress import LogProgress, progress, progress_every


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redirected_output_gets_a_line_per_interval_with_step_loss_rate_and_time_left(monkeypatch):
    monkeypatch.setenv("FMRILM_PROGRESS_EVERY", "0")
    out = io.StringIO()  # not a terminal, like a file under nohup
    with progress(total=4, desc="align", unit="step", file=out) as bar:
        assert isinstance(bar, LogProgress)
        for step in range(4):
            bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}")
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # one per update at interval 0; the last update already said where it ended
    pattern = (
        r"^\d\d:\d\d:\d\d align: step (\d)/4 \(\d+%\), loss ([\d.]+), [\d.e+]+ steps/s, about \d+ s left$"
    )
    steps = [re.match(pattern, line) for line in lines[:3]]
    assert all(steps), lines
    assert [int(m.group(1)) for m in steps] == [1, 2, 3]
    assert [m.group(2) for m in steps] == ["1.000", "0.500", "0.333"]
    assert lines[3].startswith(lines[3][:8] + " align: step 4/4 (100%), loss 0.250")


def test_the_interval_holds_lines_back_and_a_last_line_says_how_long_it_took(monkeypatch):
    monkeypatch.delenv("FMRILM_PROGRESS_EVERY", raising=False)
    assert progress_every() == 30.0  # the default
    out = io.StringIO()
    for _ in progress(range(50), desc="corpus", unit="scan", file=out):
        pass
    (line,) = out.getvalue().splitlines()  # 50 quick updates: nothing until the end
    assert re.search(r"corpus: scan 50/50 \(100%\), .* scans/s, 50 scans in \d+ s$", line), line


def test_a_terminal_gets_a_bar_and_disable_shows_nothing(monkeypatch):
    monkeypatch.setenv("FMRILM_PROGRESS_EVERY", "0")
    terminal = _Terminal()
    bar = progress(total=3, desc="stage", unit="step", file=terminal)
    assert not isinstance(bar, LogProgress)  # tqdm
    bar.update(3)
    bar.close()
    assert "3/3" in terminal.getvalue()
    quiet = io.StringIO()
    with progress(total=3, desc="stage", file=quiet, disable=True) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_a_bad_interval_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("FMRILM_PROGRESS_EVERY", "soon")
    with pytest.raises(FmriInputError, match="FMRILM_PROGRESS_EVERY='soon' is not a number of seconds"):
        progress(total=2, file=io.StringIO())


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.atlas import Atlas

    atlas = Atlas.builtin("dosenbach160").subset(np.arange(0, 160, 4), name="dos40")
    cohort = simulate_cohort(
        SimulationConfig(n_subjects=8, atlas=atlas, n_sites=1, timepoints=(100, 120), seed=1)
    )
    return cohort.save(tmp_path_factory.mktemp("cohorts") / "tiny")


def test_a_training_command_writing_to_a_file_reports_its_progress(tiny_cohort, tmp_path):
    """`nohup fmrilm train tokenizer ... > log 2>&1`: the log shows each step's loss, rate and time left."""
    out = tmp_path / "tokenizer"
    args = ["train", "tokenizer", "--cohort", str(tiny_cohort), "--out", str(out), "--preset", "tiny"]
    args += ["--steps", "6", "--log-every", "1", "--quantizer-warmup-steps", "1", "--codebook-size", "32"]
    args += ["--val-fraction", "0.25", "--threads", "1", "--progress-every", "0"]
    env = {k: v for k, v in os.environ.items() if k != "FMRILM_PROGRESS_EVERY"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "fmrilm.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=600,
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    lines = re.findall(r"^\d\d:\d\d:\d\d stage 1 \(tokenizer\): step (\d)/6 \(\d+%\), (.*)$", text, re.M)
    assert [int(step) for step, _ in lines] == [1, 2, 3, 4, 5, 6], text[-3000:]  # one line per step at 0 s
    for _step, rest in lines[1:]:  # the loop reports its loss after the first step
        assert re.fullmatch(r"loss [\d.]+, rec [\d.]+, [\d.e+]+ steps/s, about \d+ s left", rest), rest
