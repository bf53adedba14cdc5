def test_group_norm_takes_any_width():
    """8 groups where the channels allow, one per channel below 8, else gcd(8, C): width 3 (12, 24
    channels) builds and runs."""
    from semiseg.models.unet import norm_layer

    assert [norm_layer("group", c).num_groups for c in (3, 8, 12, 16, 20)] == [3, 8, 4, 8, 4]
