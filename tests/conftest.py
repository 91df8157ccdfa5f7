from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = Path(__file__).resolve().parent / "tiny_pretrain.yaml"


def pytest_configure(config):
    # Tiny models gain nothing from a second thread, and OpenMP threads that spin while another process
    # holds the cores can make a test 10x slower: one thread keeps the suite's time predictable.
    torch.set_num_threads(1)
