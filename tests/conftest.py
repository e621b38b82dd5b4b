"""Shared fixtures. Tests never download: the hub is offline and models are built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
ABIDE_DIR = (REPO_ROOT / ".." / "shared" / "data" / "abide").resolve()


@pytest.fixture(scope="session")
def abide_dir() -> Path:
    """The real ABIDE folder beside the checkout; tests that need it skip when it is absent."""
    if not (ABIDE_DIR / "phenotypes.csv").exists():
        pytest.skip(
            f"ABIDE data not found at {ABIDE_DIR} (it lives in ../shared/data/abide beside the checkout)"
        )
    return ABIDE_DIR


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one torch thread (and CI has 2 cores); the previous count comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
