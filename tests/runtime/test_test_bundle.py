"""The committed test bundle (tests/assets/tiny_bundle) is what scripts/make_default_bundle.py makes now."""

import json

import numpy as np
import pytest
from runtime_media import TEST_BUNDLE, load_bundle_maker

from edgedf.runtime.backends import open_classifier
from edgedf.runtime.bundle import load_bundle


def test_committed_test_bundle_is_current(tmp_path):
    pytest.importorskip("torch")
    import importlib.util

    spec = importlib.util.spec_from_file_location("mdb", TEST_BUNDLE.parents[2] / "scripts" / "make_default_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fresh = load_bundle_maker()(tmp_path / "fresh", **mod.TEST_BUNDLE)
    a, b = load_bundle(TEST_BUNDLE), load_bundle(fresh)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (TEST_BUNDLE, fresh))
    for m in (ma, mb):
        m.pop("files")
    assert ma == mb, "tests/assets/tiny_bundle is stale: python scripts/make_default_bundle.py --test-bundle ..."
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(open_classifier(a).p_fake(x), open_classifier(b).p_fake(x), atol=1e-6)
