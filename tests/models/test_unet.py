def test_group_norm_takes_any_width():
    """8 groups where the channels allow, one per channel below 8, else gcd(8, C): width 3 (12, 24
    channels) builds and runs."""
    from semiseg.models.unet import norm_layer

    assert [norm_layer("group", c).num_groups for c in (3, 8, 12, 16, 20)] == [3, 8, 4, 8, 4]
    import torch

    from semiseg.config import ModelConfig
    from semiseg.models import build_model

    net = build_model(ModelConfig(name="unet", width=3, depth=2, norm="group"), 1, 2, [16, 16])
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 2, 16, 16)
