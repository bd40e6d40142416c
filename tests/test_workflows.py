"""The example workflows' parallel training: a stopped run stops its trainings (no orphan beside a resuming rerun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

DRIVER = textwrap.dedent("""
    import os, subprocess, sys
    real = subprocess.Popen

    def fake_training(cmd, **kwargs):  # stands in for `nnunet-ext train`: records its pid and its command, waits
        code = ("import os, sys, time; open(os.environ['PIDS'], 'a').write(f'{os.getpid()} {sys.argv[1]}\\\\n'); "
                "time.sleep(300)")
        return real([sys.executable, "-c", code, cmd[cmd.index("-tr") + 1]], **kwargs)

    subprocess.Popen = fake_training
    import nnunet_ext.workflows as w
    w._fold_state = lambda *args: (None, False, False)
    w._train_parallel("Dataset1_X", [("A", "P", "0"), ("B", "P", "0"), ("C", "P", "0")], "cpu", sys.argv[1],
                      "3d_fullres", jobs=2)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (reaping is up to whoever adopted it)


def test_stopping_a_parallel_run_stops_its_trainings(tmp_path):
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "PIDS": str(pids)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "logs")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while (not pids.exists() or len(pids.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.1)
    started = [line.split() for line in pids.read_text().splitlines()]
    assert sorted(name for _, name in started) == ["A", "B"]  # two at once; C waits for a free slot
    proc.send_signal(signal.SIGTERM)  # what `timeout` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not [pid for pid, _ in started if _alive(int(pid))], err
    assert "stopped A fold 0" in err and "stopped B fold 0" in err
    assert len(pids.read_text().splitlines()) == 2  # C never started
