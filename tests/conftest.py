"""Shared fixtures: a synthetic benchmark folder and a corpus of good and bad files."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import write_corpus  # noqa: E402

from illustra.bench.build import build_fixture  # noqa: E402


@pytest.fixture(scope="session")
def fixture_bench(tmp_path_factory) -> Path:
    """A small synthetic benchmark (6 classes, duplicates, photo crops, truth) built once."""
    out = tmp_path_factory.mktemp("bench")
    build_fixture(out, seed=3, classes=6, per_class=10)
    return out


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A class-folder tree mixing every odd and bad file kind, with the expected outcome of each."""
    root = tmp_path / "data"
    expected = write_corpus(root)
    return root, expected


def free_port() -> int:
    """A free TCP port on the loopback interface (for torchrun's rendezvous in the DDP tests)."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]
