"""Backend session settings that the pipeline relies on. No torch."""

from runtime_media import TEST_BUNDLE

from edgedf.runtime.backends import BackendOptions, open_session


def test_ort_pool_threads_sleep_when_idle():
    """Detector and classifier sessions share the process: a pool spinning after its run would take the
    cores from the next session (on 2 cores `edgedf run` took 1.5x as long)."""
    s = open_session((TEST_BUNDLE / "model.onnx").read_bytes(), "ort", BackendOptions(threads=2))
    opts = s._sess.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2
