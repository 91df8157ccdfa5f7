from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = Path(__file__).resolve().parent / "tiny_pretrain.yaml"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Results compared bit for bit across processes must not depend on thread scheduling.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
