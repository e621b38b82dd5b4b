"""README.md runs as a test: its code blocks, in order, at toy size (Sybil; rules in tests/readme_toy.py and
TESTING.md, "The README is tested"). The test suite's own fixtures live in tests/conftest.py."""

from __future__ import annotations

import os

import pytest

from tests.readme_toy import sybil

pytest_collect_file = sybil().pytest()


@pytest.fixture(scope="module")
def readme_workspace(tmp_path_factory):
    """A temporary working folder holding what the README assumes exists; the default base model is tiny."""
    import torch

    from tests.readme_toy import write_demo_model, write_stand_ins, write_tiny_default_base

    root = tmp_path_factory.mktemp("readme")
    write_tiny_default_base(root / ".fmrilm-cache")
    write_stand_ins(root)
    write_demo_model(root / "demo_out" / "stage3_instruct" / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FMRILM_CACHE", str(root / ".fmrilm-cache"))
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(name, "1")
        patch.chdir(root)
        yield root
    torch.set_num_threads(threads)
    assert os.getcwd() != str(root)
