import pytest
import torch
from export_helpers import tiny_model

from edgedf.train.checkpoint import save_checkpoint
from edgedf.train.qat import observe, prepare_qat


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    fp, bit = tiny_model("fp"), tiny_model("bit")
    qat = prepare_qat(tiny_model("fp", seed=1))
    observe(qat, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    return {
        "fp": save_checkpoint(fp, root / "fp"),
        "bit": save_checkpoint(bit, root / "bit"),
        "qat": save_checkpoint(qat, root / "qat"),
    }
