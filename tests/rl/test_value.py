"""Value models: the in-context Beta-posterior estimator and the cheapest-successful router."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import numpy as np
import pytest

import lckernels_rl.value.incontext
import lckernels_rl.value.router
from lckernels_rl.value import CheapestSuccessfulRouter, InContextValueModel, ModelSpec, hashed_features, route

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_features_normalized_and_deterministic():
    f = hashed_features(["Solve x + 1 = 2", "", "solve   X + 1 = 2"])
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(f[0], f[2])                  # case and whitespace are normalized
    np.testing.assert_array_equal(f, hashed_features(["Solve x + 1 = 2", "", "solve   X + 1 = 2"]))


def test_features_do_not_depend_on_python_hash_seed():
    code = ("import numpy as np; from lckernels_rl.value import hashed_features; "
            "print(np.flatnonzero(hashed_features(['integrate x^2 dx'])[0]).tolist())")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=ROOT)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1


def test_empty_history_gives_half():
    np.testing.assert_array_equal(InContextValueModel().predict(["anything", "else"], []), [0.5, 0.5])
    assert InContextValueModel().predict([], [("x", 1.0)]).shape == (0,)


def test_posterior_hand_computed():
    vm = InContextValueModel()
    history = [("aaaa", 1.0)]
    fa, fz = hashed_features(["aaaa", "zzzz"])
    assert fa @ fz == 0.0                                      # disjoint n-grams (checked, not assumed)
    # mu0 = (1 + 1) / (1 + 2) = 2/3, prior strength 1
    # identical prompt: w = 1 -> alpha = 2/3 + 1, beta = 1/3 -> 5/6 ; unrelated: w = 0 -> mu0
    np.testing.assert_allclose(vm.predict(["aaaa", "zzzz"], history), [5 / 6, 2 / 3])
    a, b = vm.predict_beta(["aaaa"], history + [("aaaa", 0.0)])
    # mu0 = 2/4: alpha = .5 + 1, beta = .5 + 1
    np.testing.assert_allclose([a[0], b[0]], [1.5, 1.5])
    strong = InContextValueModel(prior_strength=4.0).predict(["aaaa"], history)
    np.testing.assert_allclose(strong, [(4 * 2 / 3 + 1) / 5])


def test_kernel_options():
    f = hashed_features(["add 2 and 3", "add 4 and 9"])
    cos = float(f[0] @ f[1])
    assert 0.2 < cos < 0.6
    w = InContextValueModel(power=3.0).kernel(["add 2 and 3"], ["add 4 and 9"])
    assert w[0, 0] == pytest.approx(cos ** 3)
    w = InContextValueModel(kernel="exp", bandwidth=0.2).kernel(["add 2 and 3"], ["add 4 and 9"])
    assert w[0, 0] == pytest.approx(np.exp((cos - 1) / 0.2))
    top = InContextValueModel(top_k=1).kernel(["add 2 and 3"], ["add 4 and 9", "add 2 and 3", "poem"])
    assert top[0].tolist() == [0.0, 1.0, 0.0]


def test_similar_successes_raise_the_prediction():
    vm = InContextValueModel()
    base = [("prove the Riemann hypothesis", 0.0), ("write a sonnet about the sea", 1.0)]
    more = base + [("add 2 and 3", 1.0), ("add 5 and 7", 1.0)]
    before, after = vm.predict(["add 4 and 9"], base)[0], vm.predict(["add 4 and 9"], more)[0]
    assert after > before
    fail = base + [("add 2 and 3", 0.0), ("add 5 and 7", 0.0)]
    assert vm.predict(["add 4 and 9"], fail)[0] < before


def test_value_model_validation():
    vm = InContextValueModel()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vm.predict(["x"], [("y", 1.5)])
    with pytest.raises(ValueError, match="pair"):
        vm.predict(["x"], [("y", 1.0, 2)])
    with pytest.raises(ValueError, match="not a string"):
        vm.predict("x", [])
    with pytest.raises(ValueError, match="kernel"):
        InContextValueModel(kernel="rbf")


def test_router_cheapest_that_qualifies():
    small = ModelSpec("small", 1.0, [("add 2 and 3", 1.0), ("prove a hard theorem", 0.0)])
    large = ModelSpec("large", 10.0, [("add 2 and 3", 1.0), ("prove a hard theorem", 1.0)])
    res = route(["add 2 and 3", "prove a hard theorem"], [large, small])   # order given is not the cost order
    assert res.choices == ["small", "large"]
    assert res.index.tolist() == [1, 0] and res.qualified.tolist() == [True, True]
    # exact match (w = 1) + the other history item (w < .01): large mu0 = 3/4 -> 1.75/2, small mu0 = 1/2 -> 1.5/2
    np.testing.assert_allclose(res.p_hat[0], [0.875, 0.75], atol=0.005)
    assert res.p_hat[1, 1] < 0.5 < res.p_hat[1, 0]


def test_router_fallback_and_ties():
    weak = ModelSpec("weak", 1.0, [("task", 0.0)])
    weaker = ModelSpec("weaker", 0.5, [("task", 0.0), ("task", 0.0)])
    res = route(["task"], [weak, weaker])
    assert res.qualified.tolist() == [False] and res.choices == ["weak"]      # highest p_hat when none qualifies
    twin_a, twin_b = ModelSpec("a", 2.0, [("task", 1.0)]), ModelSpec("b", 2.0, [("task", 1.0)])
    assert route(["task"], [twin_a, twin_b]).choices == ["a"]                 # equal cost: given order
    assert CheapestSuccessfulRouter([twin_b, twin_a], threshold=0.99)(["task"]).choices == ["b"]
    assert route([], [twin_a]).choices == []
    with pytest.raises(ValueError, match="at least one"):
        route(["task"], [])
    with pytest.raises(ValueError, match="cost"):
        route(["task"], [ModelSpec("x", -1.0)])


@pytest.mark.parametrize("module", [lckernels_rl.value.incontext, lckernels_rl.value.router], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
