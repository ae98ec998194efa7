"""model.training.inputs: pixel batches for the backbone go through the runtime's preprocessing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from model.runtime.image import ImagePreprocess, to_array
from model.training.inputs import batch_tensor


def test_batch_tensor_stacks_in_order() -> None:
    pre = ImagePreprocess(size=16)
    imgs = [Image.new("RGB", (30, 20), (v, v, v)) for v in (0, 255)]
    b = batch_tensor(imgs, pre)
    assert b.shape == (2, 3, 16, 16)
    assert float(b[0].max()) == -1.0 and float(b[1].min()) == 1.0
    assert batch_tensor([], pre).shape == (0, 3, 16, 16)
    np.testing.assert_array_equal(b[1].numpy(), to_array(imgs[1], pre))
