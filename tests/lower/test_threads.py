import os

from edgec import lower


def test_set_threads_sizes_the_tvm_pool():
    cores = len(os.sched_getaffinity(0))
    assert lower.set_threads(1) == 1
    assert lower.set_threads(0) == cores  # 0: every core we may run on, not TVM's half
    if cores > 1:
        assert lower.set_threads(2) == 2
