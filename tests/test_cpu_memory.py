"""fo.keep_cpu_memory: freed CPU memory is reused by the next allocation, without page faults.

The setting is process-wide and permanent, so each check runs in its own Python process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import functional_optim as fo
from functional_optim import cpu_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Page faults of repeated pure steps: each step allocates new 64 MiB tensors and frees the last
# ones, as a pure update does. Prints the faults of 5 such steps before and after the call.
_PROBE = textwrap.dedent("""
    import resource, sys, torch
    import functional_optim as fo

    def faults_of_steps():
        x = torch.ones(1 << 24)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            x = x + 1.0  # a new tensor of 64 MiB; the old one is freed
        assert float(x[0]) == float(x[-1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_steps()
    default = faults_of_steps()
    applied = fo.keep_cpu_memory()
    for _ in range(5):  # the heap grows to hold the freed blocks; small objects between them may
        faults_of_steps()  # make it grow again in the first rounds, as in a training loop's first steps
    kept = faults_of_steps()
    print(applied, default, kept, fo.keep_cpu_memory())
""")


def _run_probe() -> list:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in cpu_memory.ENVIRONMENT:
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return out.stdout.split()


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="keep_cpu_memory acts on glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    applied, default, kept, again = _run_probe()
    assert applied == "True" and again == "True"
    pages = 5 * (1 << 26) // 4096  # 5 steps, 64 MiB each, 4 KiB pages
    assert int(default) > pages // 2, "the default malloc settings no longer give memory back: the probe tests nothing"
    assert int(kept) < pages // 100


def test_does_nothing_where_there_is_no_glibc(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert fo.keep_cpu_memory() is False


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="keep_cpu_memory acts on glibc's malloc only")
def test_keep_memory_study_measures_both_settings(tmp_path):
    out = tmp_path / "keep_memory.md"
    subprocess.run([sys.executable, "-m", "benchmarks.keep_memory", "--optimizers", "SGD", "--compiled", "",
                    "--reps", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                   check=True)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "SGD" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| transformer", "| many-small"]
    assert "`keep_cpu_memory()` applied: True" in out.read_text()
