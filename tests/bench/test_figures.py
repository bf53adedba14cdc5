"""Benchmark figures that need no trained run or real data."""

from __future__ import annotations

import torch

from semiseg.bench.figures import translation_figure
from semiseg.config import ModelConfig
from semiseg.methods import build_method


def test_translation_figure_draws_the_fig_7_layout_without_moving_the_method(tmp_path):
    torch.manual_seed(0)
    method = build_method({"name": "translation", "unique_channels": 4, "mlp_hidden": 8, "disc_width": 4,
                           "disc_scales": 2}, ModelConfig(width=4, depth=2), in_channels=1, num_classes=2,
                          image_size=(32, 32)).train()  # fmt: skip
    state = {k: v.clone() for k, v in method.state_dict().items()}
    present, absent = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    masks = (present[:, 0] > 0.5).long()
    path = tmp_path / "fig" / "translation.png"
    translation_figure(method, present, masks, absent, path)
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    assert width > height  # 7 columns, 3 rows
    assert method.training  # mode restored, state unchanged (eval: no spectral-norm power iteration)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in state.items())
    again = tmp_path / "again.png"
    translation_figure(method, present, masks, absent, again)
    assert path.read_bytes() == again.read_bytes()  # the A->P draws are keyed: reproducible


def _ssldec(model: ModelConfig, in_channels: int, num_classes: int):
    torch.manual_seed(0)
    return build_method({"name": "ssldec"}, model, in_channels=in_channels, num_classes=num_classes).eval()


def _spy_axes(monkeypatch, *names: str) -> list[tuple[str, int, int, dict]]:
    """Records ``(method, row, column, kwargs)`` of every call of the ``matplotlib.axes.Axes`` methods
    ``names`` (the panel from the axes' place in its subplot grid)."""
    import matplotlib.axes

    calls = []
    for name in names:
        real = getattr(matplotlib.axes.Axes, name)

        def spy(ax, *args, _name=name, _real=real, **kwargs):
            spec = ax.get_subplotspec()
            calls.append((_name, spec.rowspan.start, spec.colspan.start, kwargs))
            return _real(ax, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, spy)
    return calls


def test_moons_figure_has_the_data_panel_and_one_boundary_per_model(tmp_path, monkeypatch):
    from PIL import Image

    from semiseg.bench.figures import moons_figure
    from semiseg.data.moons import make_moons

    points, labels = make_moons(200, 0.1, 0)
    net = ModelConfig(name="mlp", width=8, depth=2, head="clustering")
    models = [("before", _ssldec(net, 2, 2)), ("after", _ssldec(net, 2, 2))]
    labeled = [i < 8 for i in range(200)]
    path = tmp_path / "moons.png"
    calls = _spy_axes(monkeypatch, "contour", "scatter")
    moons_figure(models, points, labels, labeled, path, resolution=30)
    with Image.open(path) as im:
        assert im.size[0] > 2.5 * im.size[1]  # three panels side by side
    # panel 0 shows the points only; panels 1 and 2 each draw their model's 0.5 boundary under the points
    boundaries = [(col, list(kw["levels"])) for name, _, col, kw in calls if name == "contour"]
    assert boundaries == [(1, [0.5]), (2, [0.5])]
    assert sorted({col for name, _, col, _ in calls if name == "scatter"}) == [0, 1, 2]


def test_embedding_pca_reads_the_clustering_heads_input(tmp_path):
    from semiseg.bench.figures import embedding_figure, embedding_pca

    method = _ssldec(ModelConfig(name="ssldec_cnn", width=4, head="clustering"), 1, 10)
    images = torch.rand(40, 1, 28, 28)
    xy = embedding_pca(method, images)
    assert xy.shape == (40, 2)
    with torch.no_grad():
        z = method.model.backbone(images)  # the embedding the head reads (not log q)
    top2 = torch.linalg.svdvals(z - z.mean(0))[:2].pow(2).sum()
    assert abs(float((torch.from_numpy(xy) ** 2).sum()) / float(top2) - 1) < 1e-4  # its first two components
    embedding_figure([("a", method), ("b", method)], images, list(range(10)) * 4, tmp_path / "pca.png")
    assert (tmp_path / "pca.png").is_file()


def test_snapshot_grid_draws_one_row_per_setup(tmp_path, monkeypatch):
    from PIL import Image

    from semiseg.bench.figures import snapshot_grid

    torch.manual_seed(0)
    net = ModelConfig(name="mlp", output="map", hidden=[6], activation="tanh")
    method = build_method({"name": "ioda", "input_layers": 0, "output_layers": 0}, net, in_channels=1,
                          num_classes=2, image_size=(8, 8)).eval()  # fmt: skip
    snapshots = {"NDA": {10: method, 100: method}, "IODA": {10: method}}  # a missing epoch stays blank
    path = tmp_path / "fig6.png"
    calls = _spy_axes(monkeypatch, "imshow")
    snapshot_grid(snapshots, torch.rand(1, 8, 8), torch.zeros(8, 8), path)
    with Image.open(path) as im:
        assert im.size[0] > im.size[1]  # 2 rows of 4 panels
    # each row: the input, the output after each of its epochs, the truth; IODA's 100th epoch is blank
    drawn = sorted((row, col) for _, row, col, _ in calls)
    assert drawn == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 3)]
