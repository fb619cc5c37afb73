import numpy as np
import pytest

from edgec import verify
from edgec.errors import InvalidInputError
from edgec.frontend import TensorSpec


def test_compare_metrics():
    e = np.array([1.0, -2.0, 4.0, 0.0], np.float32)
    m = verify.compare(e + np.array([0, 0, 0.04, 1e-6], np.float32), e)
    assert m["max_abs_err"] == pytest.approx(0.04, rel=1e-5)
    assert m["scaled_err"] == pytest.approx(0.01, rel=1e-5)
    assert m["max_rel_err"] == pytest.approx(0.01, rel=1e-5)  # the 0.0 element is not counted
    assert 0.9999 < m["cosine"] < 1.0
    assert verify.compare(e, e)["scaled_err"] == 0.0 and verify.compare(e, e)["cosine"] == 1.0


def test_compare_flags_shape_and_nonfinite_mismatches():
    e = np.ones(4, np.float32)
    assert verify.compare(np.ones(5, np.float32), e)["scaled_err"] == np.inf
    a = e.copy()
    a[1] = np.nan
    assert verify.compare(a, e)["nonfinite_mismatch"]
    both = np.array([1.0, np.inf], np.float32)
    assert verify.compare(both, both)["scaled_err"] == 0.0


def test_random_inputs_are_seeded_and_typed():
    specs = [TensorSpec("a", (2, 3), "float32"), TensorSpec("k", (4,), "int64"),
             TensorSpec("m", (2,), "bool")]  # fmt: skip
    one, two = verify.random_inputs(specs, 7), verify.random_inputs(specs, 7)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert one["a"].dtype == np.float32 and one["k"].dtype == np.int64 and one["m"].dtype == bool
    assert not np.array_equal(verify.random_inputs(specs, 8)["a"], one["a"])


def test_load_arrays(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(3))
    np.savez(tmp_path / "all.npz", a=np.zeros(2), b=np.ones(1))
    arrays = verify.load_arrays([f"x={tmp_path / 'x.npy'}", str(tmp_path / "all.npz")])
    assert sorted(arrays) == ["a", "b", "x"]
    with pytest.raises(InvalidInputError, match="expected NAME=file.npy"):
        verify.load_arrays(["x.npy"])
