"""A process that asked for signal_on_parent_death dies with its parent (what keeps a killed worker from
leaving a job child, torchrun or a rank holding GPUs)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = ("import signal, time; from training.parent_death import signal_on_parent_death; "
         "signal_on_parent_death(signal.SIGKILL); print('ready', flush=True); time.sleep(60)")
PARENT = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, "
          "text=True); assert c.stdout.readline() == 'ready\\n'; print(c.pid, flush=True)")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_dies_with_its_parent():
    parent = subprocess.run([sys.executable, "-c", PARENT, CHILD], cwd=ROOT, capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = int(parent.stdout.strip())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the child outlived its parent")
