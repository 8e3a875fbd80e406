"""colo_proxy.service.instance_lock: a second proxy of one instance is refused, naming the
first one's pid, and the lock goes with its holder however that ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colo_proxy.service import instance_lock
from colo_proxy.service.instance_lock import AlreadyRunning, hold


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with hold("web", tmp_path) as path:
        assert instance_lock.holder("web", tmp_path) == os.getpid()
        with pytest.raises(AlreadyRunning) as err:
            with hold("web", tmp_path):
                pass
        assert err.value.pid == os.getpid() and err.value.path == path
        assert f"pid {os.getpid()}" in str(err.value) and "'web'" in str(err.value)
        with hold("db", tmp_path):  # another VM's proxy
            pass
    with hold("web", tmp_path):  # released at the end of the body
        pass


def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; "
            "from colo_proxy.service.instance_lock import hold\n"
            "with hold('web', Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(AlreadyRunning) as err:
            with hold("web", tmp_path):
                pass
        assert err.value.pid == child.pid
    finally:
        child.kill()
        child.wait()
    with hold("web", tmp_path):
        pass
