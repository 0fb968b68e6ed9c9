"""tools.cpu_seconds: the CPU seconds it reads for a grid process agree with the process's own count."""

import subprocess
import sys
import time

import pytest

from tools.cpu_seconds import read_processes

BURN = """
import sys, time
t = time.process_time()
while time.process_time() - t < 0.5:
    pass
print(time.process_time(), flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")
def test_reads_a_training_process_cpu_time_under_its_run_dir(tmp_path):
    run_dir = str(tmp_path / "arm" / "seed0")
    # A stand-in with a grid process's command line (`... train.py --run-dir D`) that burns 0.5 CPU s, says how
    # much CPU it used, then waits.
    proc = subprocess.Popen(
        [sys.executable, "-c", BURN, "train.py", "--run-dir", run_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        own = float(proc.stdout.readline())
        time.sleep(0.2)
        found = read_processes(str(tmp_path))
        other = read_processes(str(tmp_path / "elsewhere"))
    finally:
        proc.kill()
        proc.wait()
    assert list(found) == [run_dir] and list(found[run_dir]) == ["train"]
    # /proc counts in clock ticks (1/100 s): the reading is the process's own count to within a few ticks
    assert abs(found[run_dir]["train"] - own) < 0.05 and own >= 0.5
    assert other == {}
