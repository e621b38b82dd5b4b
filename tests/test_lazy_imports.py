"""`import fmrilm` stays light (no torch) and still reaches the pipeline packages the README uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import fmrilm

    seen = {"after import fmrilm": "torch" in sys.modules}
    packages = [fmrilm.data_gen, fmrilm.instructions, fmrilm.train, fmrilm.eval]
    seen["after the four packages"] = "torch" in sys.modules
    # the README's lines, as written, after a bare `import fmrilm`
    cohort = fmrilm.data_gen.simulate.simulate_cohort(
        fmrilm.data_gen.simulate.SimulationConfig(n_subjects=4, n_sites=1, timepoints=(40, 50))
    )
    load_finetuned = fmrilm.train.finetune.load_finetuned
    evaluate = fmrilm.eval.evaluate.evaluate
    build = fmrilm.instructions.builder.build_instructions
    try:
        fmrilm.data_gen.no_such_module
        missing = "no error"
    except AttributeError as exc:
        missing = str(exc)
    print(json.dumps({
        "torch": seen,
        "packages": [p.__name__ for p in packages],
        "scans": len(cohort),
        "callables": [f.__module__ + "." + f.__name__ for f in (load_finetuned, evaluate, build)],
        "missing": missing,
    }))
    """
)


def test_import_fmrilm_is_light_and_reaches_the_pipeline_packages_lazily():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] == {"after import fmrilm": False, "after the four packages": False}
    assert out["packages"] == ["fmrilm.data_gen", "fmrilm.instructions", "fmrilm.train", "fmrilm.eval"]
    assert out["scans"] == 4
    assert out["callables"] == [
        "fmrilm.train.finetune.load_finetuned",
        "fmrilm.eval.evaluate.evaluate",
        "fmrilm.instructions.builder.build_instructions",
    ]
    assert out["missing"] == "module 'fmrilm.data_gen' has no attribute 'no_such_module'"
