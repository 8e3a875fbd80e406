"""Fixtures shared by the orchestrator's etcd tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.etcd import EtcdCluster, start_single
from tests.support.etcd import add_users


@pytest.fixture
def etcd_auth(tmp_path: Path) -> Iterator[EtcdCluster]:
    """One etcd member with authentication on (users: tests.support.etcd.add_users)."""
    with start_single(tmp_path / "auth") as c:
        add_users(c)
        yield c
