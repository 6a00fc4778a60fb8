"""The CLI as a shell user pipes it (found by an outside probe: `| head` gave a
BrokenPipeError traceback)."""

from __future__ import annotations

import subprocess
import sys

from tests.gwproc import ROOT


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "schema"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # like `| head -c 10`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_full_disk_under_stdout_gets_one_line_and_exit_74() -> None:
    """`iotgw check demo.yaml > /dev/full` (an outside probe): a traceback before."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "gateway", "check",
                               str(ROOT / "config" / "demo.yaml")], cwd=ROOT,
                              stdout=full, stderr=subprocess.PIPE, timeout=60)
    stderr = proc.stderr.decode()
    assert proc.returncode == 74, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip() == "iotgw: cannot write output: No space left on device"
