"""semiseg.ops: tensor helpers shared by losses and methods."""

import pytest
import torch

from semiseg.ops import class_map


@pytest.mark.parametrize("shape, dim", [((3, 4, 5, 6), 1), ((4, 7, 9), 0), ((2, 3, 4, 5, 6), 1)])
def test_class_map_equals_argmax(shape, dim):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, shape, generator=g).float()  # many ties
    assert torch.equal(class_map(scores, dim), scores.argmax(dim))
    assert class_map(scores, dim).dtype == torch.long
