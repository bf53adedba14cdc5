"""The benchmark tables: which recipe, which rows, which seeds, and the papers' numbers.

Each table is a function registered with :func:`~semiseg.bench.spec.register_table`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

from semiseg.bench.spec import Row, Table, Tuning, register_table

if TYPE_CHECKING:
    from semiseg.bench.runner import BenchContext


@register_table("supervised-horse")
def supervised_horse() -> Table:
    return Table(
        name="supervised-horse",
        title="Supervised UNet on Weizmann horses (even-indexed images train, odd test)",
        recipe="supervised-horse",
        rows=[
            Row("supervised", "10 px/image", {"data.split.sparse_pixels": 10}, paper=23.81),
            Row("supervised", "dense", {"data.split.supervision": "dense"}, paper=5.73),
        ],
        metric="pixel_error",
        quick_seeds=[0, 1, 2],  # tv-horse's draws: its supervised rows are these runs
        metric_label="pixel error (%) at the original mask resolution, test half",
        notes=(
            "Validation = 10% of the training half, holding only the labels the setting has (its sparse "
            "pixels for the 10 px rows). Each seed is a different random draw of the sparse pixels. "
            "`paper` = the TV paper's Table 1 supervised CHM at 10 px and its fully supervised CHM (5.73%)."
        ),
    )


@register_table("supervised-acdc")
def supervised_acdc() -> Table:
    return Table(
        name="supervised-acdc",
        title="Supervised UNet on ACDC (SSL4MIS split), 4-class mean Dice over RV/MYO/LV",
        recipe="supervised-acdc",
        rows=[
            Row("supervised", "3 labeled patients", {"data.split.labeled": 3}, paper=41.5),
            Row("supervised", "7 labeled patients", {"data.split.labeled": 7}, paper=62.5),
        ],
        metric="dice/mean",
        metric_label="Dice (%) per test volume (20 patients x 2 frames), mean over RV/MYO/LV",
        notes=(
            "Each seed draws different labeled patients from the 70 training patients; model selection on "
            "the 10 validation patients' volumes (both frames). Test = the 20 test patients, ED and ES "
            "volumes scored separately (40 volumes), then averaged. `paper` = SupBaseline reported by "
            "UniMatch (Yang et al., CVPR 2023) at 256x256 with a full training schedule."
        ),
    )


#: Javanmardi et al., Table 1 (Weizmann horse, CHM): N → (supervised, MRF post-processing, TV)
TV_PAPER = {10: (23.81, 19.92, 11.98), 20: (16.63, 14.24, 11.03), 30: (14.20, 12.27, 10.30),
            40: (12.35, 11.21, 9.96), 50: (11.86, 11.01, 9.78)}  # fmt: skip


#: TV settings fixed in development on the sparse validation pixels of the training half (N = 10,
#: draws 0 and 1; see benchmarks/dev/tv-horse-dev.md); the test half was not looked at.
TV_PLAIN = {"method.name": "tv", "method.tv_weight": 0.03}
TV_EDGE = {"method.name": "tv", "method.tv_weight": 0.3, "method.edge_sigma": 0.3}


#: UniMatch's weight of the supervised loss in its phase with the unlabeled loss (loss = 0.5 ·
#: supervised + 0.5 · unlabeled + regularisers): a regulariser composed with UniMatch takes the part
#: row's weight times this, so that its weight relative to the supervised loss is the part row's
#: (in the supervised warm-up, where the supervised loss has weight 1, it is then half the part's)
UNIMATCH_SUPERVISED_WEIGHT = 0.5

#: UniMatch on the horses: every training image also in the unlabeled stream (its unlabeled pixels
#: get consistency), the supervised rows' loss (cross-entropy on the sparse pixels, no Dice), and TV
#: composed as a regulariser on the weak views with the TV row's weight relative to the supervised
#: loss. Both modes as semi-acdc's quick UniMatch recipe (chosen there on validation, not on the
#: horses): a supervised warm-up for 40 % of the epochs (quick 16 of 40, full 24 of 60), then
#: pseudo-labels from an EMA teacher (with the student's own pseudo-labels the foreground eroded on
#: ACDC's short schedules, and the horse schedules are shorter still)
UNIMATCH_HORSE = {"method.name": "unimatch", "method.ce_weight": 1.0, "method.dice_weight": 0.0,
                  "data.split.unlabeled": "all", "method.pseudo_source": "ema", "method.warmup_epochs": 24,
                  "train.epochs": 36}  # fmt: skip
UNIMATCH_HORSE_QUICK = {"method.warmup_epochs": 16, "train.epochs": 24}
UNIMATCH_HORSE_TV = {**UNIMATCH_HORSE, "method.regularizers": [
    {"name": "tv", "weight": TV_PLAIN["method.tv_weight"] * UNIMATCH_SUPERVISED_WEIGHT,
     "streams": ["unlabeled"]}]}  # fmt: skip
#: the `UniMatch` row of a composition: the composed row's regulariser at weight 0, so that both rows
#: make the same network passes (with the EMA teacher, plain UniMatch skips the student's pass on the
#: clean weak views, which a regulariser on them needs, and that pass changes the batch statistics) and
#: draw the same batches (a regulariser's own phase, e.g. the size regressor's, shifts the phase index
#: that keys them): the two rows differ only in the penalty's weight
UNIMATCH_HORSE_PLAIN = {**UNIMATCH_HORSE, "method.regularizers": [
    {**UNIMATCH_HORSE_TV["method.regularizers"][0], "weight": 0.0}]}  # fmt: skip


@register_table("tv-horse")
def tv_horse() -> Table:
    rows: list[Row] = []
    for n, (sup, mrf, tv) in TV_PAPER.items():
        setting = f"{n} px/image"
        sparse = {"data.split.sparse_pixels": n}
        quick = None if n in (10, 50) else [0]  # quick mode: 3 draws at the ends of the range, 1 between
        rows += [
            Row("supervised", setting, sparse, paper=sup, quick_seeds=quick),
            Row(
                "MRF post-processing",
                setting,
                postprocess="mrf",
                reuse=f"supervised | {setting}",
                paper=mrf,
                quick_seeds=quick,
            ),  # fmt: skip
            Row("TV", setting, {**sparse, **TV_PLAIN}, paper=tv, quick_seeds=quick),
            Row("TV, edge-aware", setting, {**sparse, **TV_EDGE}, quick_seeds=quick),
        ]
        if n in (10, 50):  # composition with a consistency method, at both ends of the range
            rows += [
                Row(
                    "UniMatch",
                    setting,
                    {**sparse, **UNIMATCH_HORSE_PLAIN},
                    quick_seeds=quick,
                    quick_overrides=UNIMATCH_HORSE_QUICK,
                ),
                Row(
                    "UniMatch + TV",
                    setting,
                    {**sparse, **UNIMATCH_HORSE_TV},
                    quick_seeds=quick,
                    quick_overrides=UNIMATCH_HORSE_QUICK,
                ),
            ]
    dense = {"data.split.supervision": "dense"}
    rows += [
        Row("supervised", "dense", dense, paper=5.73, seeds=[0]),
        Row("MRF post-processing", "dense", postprocess="mrf", reuse="supervised | dense", seeds=[0]),
        Row("TV", "dense", {**dense, **TV_PLAIN}, seeds=[0]),
        Row("TV, edge-aware", "dense", {**dense, **TV_EDGE}, seeds=[0]),
    ]
    return Table(
        name="tv-horse",
        title="Total-variation loss with sparse pixel labels, Weizmann horses (the TV paper's Table 1)",
        recipe="supervised-horse",
        rows=rows,
        metric="pixel_error",
        metric_label="pixel error (%), original mask resolution, test half",
        quick_seeds=[0, 1, 2],
        extras=_tv_extras,
        notes=(
            "Even-indexed images train, odd-indexed test (164 / 164). Validation = 10% of the training half "
            "with only its sparse labels (the dense rows: dense labels). `TV` is the paper's loss (Sobel, "
            "L1, mean over all pixels) with a constant weight; `TV, edge-aware` (beyond the paper) weights "
            "each pixel's TV by exp(-|grad I|^2 / 2 sigma^2). Both settings were "
            "fixed before this table in development runs that read only the sparse validation pixels "
            "(benchmarks/dev/tv-horse-dev.md) and are used for every N; the MRF pairwise weight is chosen "
            "per run on the same validation pixels. Each seed is a different random draw of the sparse "
            "pixels: 5 draws per N in full mode; quick mode trains 3 draws at N = 10 and 50 and 1 draw at "
            "N = 20, 30, 40 and dense (n=1: such rows do not support a claim). `UniMatch` (N = 10 and 50) trains "
            "on the same sparse pixels with every training image also in the unlabeled stream, so the "
            "unlabeled pixels of every image get weak-to-strong consistency (UniMatch's defaults, threshold "
            "0.95, cross-entropy on the sparse pixels as the supervised rows; its strong views jitter brightness "
            "and contrast and blur, as its ACDC code, not saturation, hue and grey level as its natural-image "
            "code; as semi-acdc's quick UniMatch: "
            "16 of the 40 epochs (full: 24 of 60) supervised warm-up, then pseudo-labels from an EMA teacher, a "
            "choice made on ACDC validation data, not on the horses; the warm-up restarts Adam's moments and "
            "its validations do not compete for the best checkpoint); `UniMatch + TV` adds the TV loss on the "
            "weak views with the `TV` row's weight relative to the supervised loss (0.015 against UniMatch's "
            "0.5 x CE, as 0.03 against CE; half that in the warm-up). `UniMatch` carries the same TV regulariser "
            "at weight 0: with the EMA teacher a plain UniMatch skips the student's pass on the clean weak "
            "views, which the TV term needs, so the two rows make the same passes and differ only in the TV "
            "term's weight. "
            "`paper` = Javanmardi et al. Table 1 (CHM "
            "classifier); the dense supervised `paper` value is their fully supervised CHM (5.73%)."
        ),
    )


def supervised_baseline(cfg):
    """``cfg`` with a supervised method (the same cross-entropy / Dice weights, no regularisers): the
    baseline of a step-time ratio (:func:`~semiseg.bench.timing.step_time_ratio` gives it as many
    images per iteration as the method draws over all its streams)."""
    method = {
        "name": "supervised",
        **{k: cfg.method[k] for k in ("ce_weight", "dice_weight") if k in cfg.method},
    }
    # the same images; the weak labels of the unlabeled ones, which supervised training does not read
    # (and refuses), are left out
    split = dataclasses.replace(cfg.data.split, unlabeled_supervision="none")
    return dataclasses.replace(cfg, method=method, data=dataclasses.replace(cfg.data, split=split))


def _config_of(ctx: BenchContext, key: str, seed: int):
    """The resolved config of row ``key``, seed ``seed``, as the table ran it (tuned values aside)."""
    from semiseg.bench.runner import row_config

    row = next(r for r in ctx.table.rows if r.key == key)
    return row_config(ctx.table, row, seed, ctx.quick, user=ctx.overrides)


def _tv_extras(ctx: BenchContext) -> dict[str, Any]:
    """Step time of TV over a supervised step (same data and batch), and a figure like the paper's Fig. 2."""
    from semiseg.bench.figures import comparison_figure
    from semiseg.bench.timing import step_time_ratio

    seed = min(s for (_, s) in ctx.run_dirs)
    ratio = {}
    for name in ("TV", "TV, edge-aware"):
        cfg = _config_of(ctx, f"{name} | 10 px/image", seed)
        ratio[name] = step_time_ratio(
            cfg, supervised_baseline(cfg), data_root=ctx.data_root, bundle=ctx.bundle
        )
    dense_seed = min(s for (k, s) in ctx.run_dirs if k == "supervised | dense")
    panels = [
        ("supervised (10 px)", ctx.trained("supervised | 10 px/image", seed)),
        ("TV (10 px)", ctx.trained("TV | 10 px/image", seed)),
        ("TV edge-aware (10 px)", ctx.trained("TV, edge-aware | 10 px/image", seed)),
        ("supervised (dense)", ctx.trained("supervised | dense", dense_seed)),
    ]
    figure = ctx.results_dir / f"{ctx.table.name}.png"
    comparison_figure(panels, figure, ctx)
    return {"step_time_ratio": ratio, "figure": str(figure)}


#: Kervadec et al., Table 1 (ACDC LV, 75 training exams): n → (FS, Proposals, Proposed, Oracle)
CURRICULUM_PAPER = {5: (24.8, 8.1, 53.1, 74.3), 10: (44.4, 43.9, 58.5, 75.7), 20: (71.7, 49.1, 72.7, 79.0),
                    30: (73.1, 62.6, 75.4, 77.0), 40: (75.8, 68.8, 76.3, 80.4)}  # fmt: skip

#: Epochs of the rows that continue from the FS model (full mode / quick mode).
CONTINUE_EPOCHS, CONTINUE_EPOCHS_QUICK = 50, 10


def patients(n: int) -> str:
    """The setting of a row with ``n`` labeled patients."""
    return f"{n} labeled patient{'s' if n != 1 else ''}"


#: UniMatch continuing from the FS model (its ACDC defaults, as semi-acdc's: supervised loss 0.5 x
#: (0.5 CE + 0.5 Dice) against 0.5 x the unlabeled loss) and with the size penalty of "Proposed" (the same
#: weight relative to the supervised loss, gamma and regressor) as a regulariser on the weak views;
#: in quick mode the pseudo-labels come from an EMA teacher that starts as the FS model (semi-acdc's
#: quick recipe, chosen there on validation; the FS model plays the warm-up's part)
CURRICULUM_UNIMATCH = {"name": "unimatch", "ce_weight": 0.5, "dice_weight": 0.5}
CURRICULUM_UNIMATCH_QUICK = {**CURRICULUM_UNIMATCH, "pseudo_source": "ema"}
#: the size penalty as a regulariser on the unlabeled stream's weak views: curriculum-acdc's weight
#: and gamma (chosen there on validation, benchmarks/dev/curriculum-acdc-dev.md) with bounds from the
#: true sizes (oracle), or from Proposed's regressor (density, 40 epochs; quick: 10, width 8)
SIZE_PENALTY = {"name": "size", "weight": 0.001, "gamma": 0.1, "streams": ["unlabeled"]}
CURRICULUM_SIZE = {**SIZE_PENALTY, "source": "regressor", "regressor_arch": "density", "regressor_epochs": 40,
                   "regressor_rotate_degrees": 45.0}  # fmt: skip
CURRICULUM_SIZE_QUICK = {**CURRICULUM_SIZE, "regressor_epochs": 10, "regressor_width": 8}


def scaled_weight(spec: dict[str, Any], factor: float) -> dict[str, Any]:
    """A regulariser spec with its weight times ``factor``.

    Examples:
        >>> scaled_weight({"name": "size", "weight": 0.001}, 0.5)
        {'name': 'size', 'weight': 0.0005}
    """
    return {**spec, "weight": spec["weight"] * factor}


def curriculum_rows(
    n: int, paper: tuple[float | None, ...] = (None, None, None, None), unimatch: bool = False
) -> list[Row]:
    """FS from scratch; then, each starting from the same seed's FS model and trained for the same
    extra epochs: FS continued (the control), Proposals, Proposed (size regressor), Oracle (true size)
    and, with ``unimatch``, UniMatch and UniMatch + size (the Proposed size penalty as a regulariser)."""
    setting = patients(n)
    fs = {"data.split.labeled": n, "method.source": "fs"}
    cont = {"train.epochs": CONTINUE_EPOCHS}
    quick = {"train.epochs": CONTINUE_EPOCHS_QUICK}
    start = f"FS | {setting}"

    def after_fs(name: str, overrides: dict[str, Any], value: float | None, quick_extra=None) -> Row:
        over = {**fs, **cont, **overrides}
        return Row(
            name,
            setting,
            over,
            paper=value,
            init_from=start,
            quick_overrides={**quick, **(quick_extra or {})},
        )

    extra = []
    if unimatch:
        # the size penalty's weight relative to the supervised loss as in Proposed (CE + Dice, weight 1);
        # the UniMatch row carries it at weight 0 (the same passes and regressor: UNIMATCH_HORSE_PLAIN)
        size, size_quick = (
            scaled_weight(r, SEMI_SIZE_FACTOR) for r in (CURRICULUM_SIZE, CURRICULUM_SIZE_QUICK)
        )
        with_size = {**CURRICULUM_UNIMATCH, "regularizers": [size]}
        plain = {**CURRICULUM_UNIMATCH, "regularizers": [scaled_weight(size, 0.0)]}
        plain_quick = {**CURRICULUM_UNIMATCH_QUICK, "regularizers": [scaled_weight(size_quick, 0.0)]}
        extra = [
            after_fs("UniMatch", {"method": plain}, None, {"method": plain_quick}),
            after_fs(
                "UniMatch + size",
                {"method": with_size},
                None,
                {"method": {**CURRICULUM_UNIMATCH_QUICK, "regularizers": [size_quick]}},
            ),  # fmt: skip
        ]
    return [
        Row("FS", setting, fs, paper=paper[0]),
        after_fs("FS, continued", {}, None),
        after_fs("Proposals", {"method.source": "proposals", "method.fs_epochs": 0}, paper[1]),
        after_fs("Proposed (size regressor)", {"method.source": "regressor"}, paper[2]),
        after_fs(
            "Oracle (true size)",
            {"method.source": "oracle", "data.split.unlabeled_supervision": "size"},
            paper[3],
        ),  # fmt: skip
        *extra,
    ]


def _curriculum_table(
    name: str, title: str, paper: dict[int, tuple], metric: str, label: str, notes: str, unimatch=()
):
    return Table(
        name=name,
        title=title,
        recipe=name,
        rows=[r for n, p in paper.items() for r in curriculum_rows(n, p, n in unimatch)],
        metric=metric,
        metric_label=label,
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=_size_extras,
        notes=notes,
    )


@register_table("curriculum-acdc")
def curriculum_acdc() -> Table:
    return _curriculum_table(
        "curriculum-acdc",
        "Curriculum semi-supervised segmentation with size constraints, ACDC left ventricle",
        {1: (None,) * 4, 2: (None,) * 4, **CURRICULUM_PAPER},
        "dice/1",
        "LV Dice (%) per test volume, mean over 40 volumes",
        "SSL4MIS split: 70 training patients (the paper had 75), 10 validation, 20 test patients; both "
        "frames of a patient are volumes of that patient. n labeled patients (dense masks, both frames), "
        "every other training patient unlabeled. Each seed draws different labeled patients. `FS` trains "
        "on the labeled slices only; every other row starts from the same seed's FS checkpoint "
        "(`train.init`) and trains the same number of further epochs: `FS, continued` (labeled only, the "
        "control for the extra epochs), `Proposals` (cross-entropy on the FS model's LV pixels on "
        "unlabeled slices), `Proposed` (size regressor trained on the labeled slices, then lambda * size "
        "penalty on unlabeled slices, gamma 0.1), `Oracle` (true sizes +- gamma). Model selection: best "
        "validation Dice (10 validation patients) per run; the test volumes are scored once with that "
        "checkpoint. `paper` = Kervadec et al. Table 1 (validation Dice over the last 50 epochs, ENet, "
        "256x256); ours: UNet, Dice on test volumes. `UniMatch` (n = 1, 2, 5) continues from the same FS "
        "model for the same extra epochs with UniMatch's weak-to-strong consistency on the unlabeled slices "
        "(quick mode: pseudo-labels from an EMA teacher that starts as the FS model, as semi-acdc's quick "
        "recipe; UniMatch's ACDC loss weights as semi-acdc's: 0.5 x (0.5 CE + 0.5 Dice) + 0.5 x the unlabeled "
        "loss); `UniMatch + size` adds Proposed's size penalty (regressor trained first, same gamma, and the "
        "same weight relative to the supervised loss: 0.00025 against UniMatch's 0.25 x (CE + Dice), as "
        "Proposed's 0.001 against CE + Dice) on the weak views. `UniMatch` carries that regulariser at "
        "weight 0 (the same regressor, batches and network passes: with the EMA teacher a plain UniMatch "
        "skips the student's pass on the clean weak views, which the penalty needs), so the two differ only "
        "in the penalty. n = 1 and 2 (no paper numbers) are a low-label stress test.",
        unimatch=(1, 2, 5),
    )


@register_table("curriculum-acdc-4class")
def curriculum_acdc_4class() -> Table:
    return _curriculum_table(
        "curriculum-acdc-4class",
        "Curriculum size constraints with per-class sizes on 4-class ACDC (RV, MYO, LV)",
        {3: (41.5, None, None, None), 7: (62.5, None, None, None)},
        "dice/mean",
        "Dice (%) per test volume, mean over RV/MYO/LV and 40 volumes",
        "As curriculum-acdc with every foreground class constrained by its own regressed size. `paper` "
        "for FS = SupBaseline reported by UniMatch (Yang et al., CVPR 2023: 41.5 / 62.5 at 3 / 7 "
        "labeled cases); UniMatch itself reaches 88.9 / 89.9 (full 256x256 schedule, GPU).",
    )


def size_step_configs(cfg):
    """(size method, supervised baseline on as many images) of a size-method run config, for
    :func:`~semiseg.bench.timing.step_time_ratio` of its segmenter phase. The λ ramp-up is dropped
    (the step is timed at full weight)."""
    method_cfg = dataclasses.replace(
        cfg, method={k: v for k, v in cfg.method.items() if k != "ramp_up_steps"}
    )
    return method_cfg, supervised_baseline(method_cfg)


def _size_extras(ctx: BenchContext) -> dict[str, Any]:
    """Step time of the size method's segmenter phase over a supervised step on as many images."""
    from semiseg.bench.timing import step_time_ratio

    keys = [k for (k, _) in ctx.run_dirs if k.startswith("Proposed")]
    # the paper's smallest setting (n = 5) where the table has it, not the first row found
    key = next((k for k in keys if k.endswith(f"| {patients(min(CURRICULUM_PAPER))}")), keys[0])
    seed = min(s for (k, s) in ctx.run_dirs if k == key)
    method_cfg, base_cfg = size_step_configs(_config_of(ctx, key, seed))
    ratio = step_time_ratio(
        method_cfg, base_cfg, phase="segmenter", data_root=ctx.data_root, bundle=ctx.bundle
    )
    return {"step_time_ratio": {"Proposed (size regressor)": ratio}}


# ------------------------------------------------------------------------------------ semi-acdc
#: published ACDC mean Dice (%) at 1 / 3 / 7 labeled patients, 256x256, full schedules on a GPU:
#: SupBaseline and UniMatch from UniMatch (Yang et al., CVPR 2023, more-scenarios/medical README),
#: BCP from Bai et al. (CVPR 2023, Table 2: 5 % and 10 % of ACDC = 3 and 7 patients)
SEMI_PAPER: dict[str, tuple[float | None, float | None, float | None]] = {
    "supervised": (28.5, 41.5, 62.5),
    "UniMatch": (85.4, 88.9, 89.9),
    "BCP": (None, 87.59, 88.84),
}

#: full mode: the supervised rows train with the semi recipes' published protocol (SGD 0.01, momentum
#: 0.9, weight decay 1e-4, poly, 12 labeled slices per step, 300 x 100 iterations) instead of
#: supervised-acdc's own (Adam, batch 16, 10k iterations), so that a full-mode gain is not a budget
#: or optimizer difference; quick mode keeps supervised-acdc's quick section, which the semi recipes'
#: quick sections copy
SUP_FULL: dict[str, Any] = {
    "train.epochs": 300,
    "train.batch_size": 12,
    "train.optimizer": "sgd",
    "train.lr": 0.01,
    "train.momentum": 0.9,
    "train.weight_decay": 0.0001,
    # UniMatch's supervised baseline: (CE + Dice) / 2 (under SGD the scale is the step size)
    "method.ce_weight": 0.5,
    "method.dice_weight": 0.5,
}
#: restores supervised-acdc's quick values under :data:`SUP_FULL` (the rows' quick configs are the
#: recipe's quick section, unchanged; under Adam the loss scale does not matter)
SUP_QUICK: dict[str, Any] = {
    "train.epochs": 25,
    "train.batch_size": 8,
    "train.optimizer": "adam",
    "train.lr": 0.001,
    "train.weight_decay": 0.0,
    "method.ce_weight": 1.0,
    "method.dice_weight": 1.0,
}

#: (row name, recipe, extra overrides) of the semi-acdc methods
SEMI_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("supervised", "supervised-acdc", SUP_FULL),
    ("mean teacher", "mean-teacher-acdc", {}),
    ("FixMatch", "fixmatch-acdc", {}),
    ("UniMatch", "unimatch-acdc", {}),
    ("BCP", "bcp-acdc", {}),
    ("CPS", "cps-acdc", {}),
]


#: the schedule control of the quick FixMatch / UniMatch recipes (a 10-epoch warm-up phase, then 15
#: epochs with a fresh optimizer and poly decay): supervised training for the first 40 % of the
#: schedule, then restarted from that run's best.pt for the remaining 60 % (full mode: 120 + 180 epochs)
SUP_FIRST = "supervised, first 40 %"
SUP_RESTART = "supervised, restarted after 40 %"
#: the same for BCP's schedule (copy-paste pre-training for 6 of the 25 quick epochs, then
#: self-training from the pre-training's best state with a fresh optimizer; full mode 100 + 300),
#: at 3 labeled patients only
SUP_FIRST_BCP = "supervised, first 24 %"
SUP_RESTART_BCP = "supervised, restarted after 24 %"

#: rows with 3 draws at 3 labeled patients in quick mode (the others: draw 0 only): supervised, the
#: two best semi methods on the validation patients (FixMatch and UniMatch with the EMA teacher,
#: benchmarks/dev/semi-acdc-dev.md), BCP, UniMatch + size and the schedule control
#: the size penalty's weight in semi-acdc's UniMatch + size rows relative to curriculum-acdc's Proposed
#: (0.001 against CE + Dice): unimatch-acdc's supervised loss is 0.5 x (0.5 CE + 0.5 Dice)
SEMI_SIZE_FACTOR = UNIMATCH_SUPERVISED_WEIGHT * 0.5

#: the control of `UniMatch + size (regressor)` at 3 patients: the same regulariser at weight 0 (the same
#: passes, regressor and batches; see UNIMATCH_HORSE_PLAIN), beside the plain UniMatch row
SEMI_SIZE_ZERO = "UniMatch + size at weight 0"

SEMI_QUICK_DRAWS = (
    "supervised",
    "FixMatch",
    "UniMatch",
    "BCP",
    "UniMatch + size (regressor)",
    SEMI_SIZE_ZERO,
    SUP_FIRST,
    SUP_RESTART,
    SUP_FIRST_BCP,
    SUP_RESTART_BCP,
)


def semi_rows(n: int) -> list[Row]:
    """The semi-acdc rows at ``n`` labeled patients (draw 0 = the literature's listed patients)."""
    setting = patients(n)
    base = {"data.split.labeled": n, "data.split.first_draw": "listed", "train.eval_last": True}
    index = {1: 0, 3: 1, 7: 2}[n]

    def row(name: str, recipe: str, overrides: dict[str, Any], **kw: Any) -> Row:
        draws = None if n == 3 and name in SEMI_QUICK_DRAWS else [0]  # None: the table's quick seeds
        return Row(name, setting, {**base, **overrides}, recipe=recipe, quick_seeds=draws, **kw)

    def schedule_control(
        first: str, restart: str, epochs: tuple[int, int], quick: tuple[int, int]
    ) -> list[Row]:
        """Supervised training for the first part of a method's schedule, then restarted from that
        run's best.pt for the rest (epochs: full mode, quick: quick mode)."""
        return [
            row(first, "supervised-acdc", {**SUP_FULL, "train.epochs": epochs[0]},
                quick_overrides={**SUP_QUICK, "train.epochs": quick[0]}),
            row(restart, "supervised-acdc", {**SUP_FULL, "train.epochs": epochs[1]},
                quick_overrides={**SUP_QUICK, "train.epochs": quick[1]}, init_from=f"{first} | {setting}"),
        ]  # fmt: skip

    rows = [
        row(
            name,
            recipe,
            extra,
            paper=SEMI_PAPER.get(name, (None,) * 3)[index],
            quick_overrides=SUP_QUICK if name == "supervised" else {},
        )
        for name, recipe, extra in SEMI_METHODS
    ]
    rows += schedule_control(SUP_FIRST, SUP_RESTART, (120, 180), (10, 15))
    if n == 3:
        rows += schedule_control(SUP_FIRST_BCP, SUP_RESTART_BCP, (100, 300), (6, 19))
    rows += [
        row(
            "UniMatch + size (regressor)",
            "unimatch-acdc",
            {"method.regularizers": [scaled_weight(CURRICULUM_SIZE, SEMI_SIZE_FACTOR)]},
            quick_overrides={"method.regularizers": [scaled_weight(CURRICULUM_SIZE_QUICK, SEMI_SIZE_FACTOR)]},
        ),  # fmt: skip
        *(
            [
                row(
                    SEMI_SIZE_ZERO,
                    "unimatch-acdc",
                    {"method.regularizers": [scaled_weight(CURRICULUM_SIZE, 0.0)]},
                    quick_overrides={"method.regularizers": [scaled_weight(CURRICULUM_SIZE_QUICK, 0.0)]},
                )
            ]
            if n == 3
            else []
        ),  # fmt: skip
        row(
            "UniMatch + size (oracle)",
            "unimatch-acdc",
            {
                "method.regularizers": [scaled_weight(SIZE_PENALTY, SEMI_SIZE_FACTOR)],
                "data.split.unlabeled_supervision": "size",
            },
        ),  # fmt: skip
    ]
    return rows


#: the committed pass-budget measurement of the semi methods (benchmarks/step_ratio_semi.py)
SEMI_STEP_RATIOS = "semi-step-ratio.json"


def _semi_extras(ctx: BenchContext) -> dict[str, Any]:
    """The semi methods' step ratios and pass budgets, from the committed measurement in the results
    folder (``benchmarks/step_ratio_semi.py``: 20 minutes on idle cores, not re-measured here), with
    whether it timed the same training code as the table's runs."""
    path = ctx.results_dir / SEMI_STEP_RATIOS
    if not path.is_file():
        return {"pass_budget": {"file": str(path), "missing": "run benchmarks/step_ratio_semi.py"}}
    data = json.loads(path.read_text())
    prov = data.get("provenance", {})
    methods = {
        c["recipe"]: {
            "step_ratio": c["step"]["ratio"],
            "ratio_to_budget": c["budget"]["ratio_to_budget"],
            "ratio_to_budget_paired": c["budget"].get("ratio_to_budget_paired"),
            "ratio_to_budget_paired_quartiles": c["budget"].get("ratio_to_budget_paired_quartiles"),
            "passes_per_batch_size": c["budget"]["passes_per_batch_size"],
        }
        for c in data.get("cases", [])
    }
    return {
        "pass_budget": {
            "file": str(path),
            "git_commit": prov.get("git_commit"),
            "source_hash": prov.get("source_hash"),
            "same_training_code": prov.get("source_hash") == ctx.cache.source,
            "rounds": prov.get("rounds"),
            "target": data.get("target_ratio_to_budget"),
            "methods": methods,
        }
    }


@register_table("semi-acdc")
def semi_acdc() -> Table:
    return Table(
        name="semi-acdc",
        title="Semi-supervised segmentation on ACDC (SSL4MIS split), 4-class mean Dice over RV/MYO/LV",
        recipe="supervised-acdc",
        rows=[r for n in (3, 1, 7) for r in semi_rows(n)],
        metric="dice/mean",
        metric_label="Dice (%) per test volume (20 patients x 2 frames), mean over RV/MYO/LV",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=_semi_extras,
        notes=(
            "SSL4MIS split: 70 training patients, 10 validation, 20 test (both frames of a patient are its "
            "volumes). n labeled patients with dense masks; every other training patient's slices are "
            "unlabeled (the supervised row does not see them). Draw 0 takes the first patients of "
            "`train_slices.list` as the literature does (3 patients: 099, 038, 050); further draws are random "
            "patients. Every row has its own recipe (`<method>-acdc`) with the same quick budget: 128x128, "
            "UNet-16, 8 labeled (+ 8 unlabeled) slices per iteration, 25 x 40 iterations, Adam 1e-3, poly "
            "decay, the same weak augmentation; FixMatch and UniMatch spend the first 10 of the 25 epochs on a "
            "supervised warm-up phase (its own 10-epoch poly decay; the next phase starts a fresh Adam at 1e-3 "
            "with a 15-epoch poly decay; in `UniMatch + size` the warm-up already applies the size penalty) "
            "and take their pseudo-labels from an EMA teacher (decay 0.99), chosen on the validation patients "
            "(with the student's own pseudo-labels the unlabeled images' foreground shrank on this short "
            "schedule). Their unlabeled loss is cross-entropy on the confident pixels (UniMatch's natural-image "
            "loss) where UniMatch's ACDC code uses Dice on them: with the student's pseudo-labels Dice eroded "
            "the foreground as CE did (benchmarks/dev/semi-acdc-dev.md), and with the EMA teacher only CE was "
            "tried, so these rows are not UniMatch's ACDC protocol to the letter. "
            "Mean teacher (SSL4MIS's perturbation: the teacher sees the slice plus clipped Gaussian noise, "
            "the student the clean slice; no warm-up) and CPS put the labeled and the unlabeled slices "
            "through each network in separate forward passes, where SSL4MIS uses one batch: from scratch on "
            "this budget the one batch halved the early validation Dice even without the consistency term "
            "(benchmarks/dev/semi-acdc-dev.md). "
            "`supervised, restarted after 40 %` is their schedule's supervised control: "
            "`supervised, first 40 %` (10 epochs), then 15 more epochs from its best.pt with a fresh Adam "
            "and poly decay (FixMatch and UniMatch continue from the warm-up's last state, the control from "
            "its validation-selected one). BCP pre-trains for 6 epochs (copy-paste of labeled slices) and "
            "self-trains for 19 from the pre-training's best state with a fresh Adam; `supervised, first 24 "
            "%` / `restarted after 24 %` (6 + 19 epochs, 3 labeled patients) is its schedule's control. Full "
            "mode: every supervised row trains with the semi recipes' protocol (256x256, SGD 0.01, momentum "
            "0.9, weight decay 1e-4, poly, 12 labeled slices per step, 300 x 100 iterations; the controls "
            "120 + 180 and 100 + 300 epochs); BCP keeps its published 10k + 30k iterations, 40k against the "
            "others' 30k. Model selection: best validation Dice on the 10 validation "
            "patients only; `last checkpoint` scores the model as training left it. `UniMatch + size "
            "(regressor)` adds the size penalty (gamma 0.1; weight 0.00025, i.e. curriculum-acdc's 0.001 relative to "
            "the supervised loss, which is 0.25 x (CE + Dice) in UniMatch's phase; half that relative weight in "
            "the warm-up, where the supervised loss is 0.5 x (CE + Dice)) on the unlabeled weak views with "
            "bounds from a size regressor trained on the labeled slices first (the curriculum paper's "
            "`Proposed`); `(oracle)` takes the true sizes; `UniMatch + size at weight 0` (3 patients) is its "
            "control: the same regulariser and regressor at weight 0, so that it makes the same network passes "
            "as the composed row (with the EMA teacher, plain UniMatch skips the student's pass on the clean "
            "weak views, which the penalty needs; the pass changes the batch statistics) and draws the same "
            "batches. The penalty is a sum over pixels (`normalization: pixels`), so the same weight is about "
            "1.8 times stronger at 128x128 than at curriculum-acdc's 96x96 and here sums three classes. "
            "`paper` = published numbers at 256x256 with full GPU schedules (UniMatch: SupBaseline and UniMatch, "
            "whose checkpoints were selected on the validation "
            "and test volumes together during training (its valtest split), while ours select on the 10 "
            "validation patients only; BCP: Table 2 at 5 % / 10 % labeled). Full mode's supervised rows use "
            "UniMatch's supervised loss, (CE + Dice) / 2."
        ),
    )


#: Vorontsov et al., Table 1 (a) (Dice, MNIST) by variant: seg-only, AE baseline, proposed, sep dec;
#: (b) the skip ablation on 48x48 hard
TRANSLATION_PAPER = {"48-simple": (0.61, 0.75, 0.79, 0.78), "48-hard": (0.36, 0.49, 0.57, 0.50),
                     "128": (0.15, 0.57, 0.65, 0.70)}  # fmt: skip
TRANSLATION_SKIP_PAPER = {"compress": 0.57, "concat": 0.57, "sum": 0.56, "none": 0.42}
TRANSLATION_ROWS = (
    # the control reads no tags, and the trainer refuses weak labels nothing reads: the same images
    # (the split does not depend on them) without the tags
    ("seg-only", {"method.objective": "segmentation", "data.split.unlabeled_supervision": "none"}),
    ("AE baseline", {"method.objective": "autoencoder"}),
    ("proposed", {}),
    ("proposed (sep dec)", {"method.segmenter": "separate"}),
)


def translation_rows() -> list[Row]:
    rows = []
    for variant, paper in TRANSLATION_PAPER.items():
        recipe = "translation-mnist-128" if variant == "128" else "translation-mnist"
        setting = {"48-simple": "48x48 simple", "48-hard": "48x48 hard", "128": "128x128"}[variant]
        quick = [0] if variant == "128" else None  # quick mode: one seed at 128x128 (about 1 CPU-h a run)
        for (name, overrides), value in zip(TRANSLATION_ROWS, paper):
            rows.append(Row(name, setting, {"data.variant": variant, **overrides}, paper=100 * value,
                            quick_seeds=quick, recipe=recipe))  # fmt: skip
    for skip, value in TRANSLATION_SKIP_PAPER.items():
        rows.append(
            # compress is the default: its overrides equal `proposed | 48x48 hard`'s (one run, cached)
            Row(
                f"proposed, skip {skip}",
                "48x48 hard",
                {"data.variant": "48-hard", **({"method.skip": skip} if skip != "compress" else {})},
                paper=100 * value,
                recipe="translation-mnist",
            )  # fmt: skip
        )
    return rows


#: the committed step-time measurement of the translation method (benchmarks/step_ratio_translation.py)
TRANSLATION_STEP_RATIOS = "translation-step-ratio.json"


def _translation_extras(ctx: BenchContext) -> dict[str, Any]:
    """The paper's Fig. 7 layout from `proposed | 48x48 hard` (its first seed), and the committed step
    ratios (``benchmarks/step_ratio_translation.py``, measured on idle cores, not here)."""
    from semiseg.bench.figures import translation_run_figure

    out: dict[str, Any] = {}
    seeds = sorted(s for (k, s) in ctx.run_dirs if k == "proposed | 48x48 hard")
    if seeds:
        figure = ctx.results_dir / f"{ctx.table.name}.png"
        translation_run_figure(ctx.trained("proposed | 48x48 hard", seeds[0]), figure, ctx.data_root)
        out["figure"] = str(figure)
    path = ctx.results_dir / TRANSLATION_STEP_RATIOS
    if path.is_file():
        data = json.loads(path.read_text())
        prov = data.get("provenance", {})
        out["step_time_ratio"] = {
            "file": str(path),
            "git_commit": prov.get("git_commit"),
            "same_training_code": prov.get("source_hash") == ctx.cache.source,
            "cases": {c["architecture"]: {"ratio": c["ratio"], "seconds_per_step": c["seconds_per_step"],
                                          "gflops_per_step": c["gflops_per_step"]} for c in data["cases"]},
        }  # fmt: skip
    else:
        out["step_time_ratio"] = {"file": str(path), "missing": "run benchmarks/step_ratio_translation.py"}
    return out


@register_table("translation-mnist")
def translation_mnist() -> Table:
    return Table(
        name="translation-mnist",
        title="Presence/absence translation on cluttered MNIST: Dice of the digit, test fold",
        recipe="translation-mnist",
        rows=translation_rows(),
        metric="dice_pooled/1",
        metric_label="Dice (%) of the digit pooled over every pixel of the 1000 present test images",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=_translation_extras,
        notes=(
            "Cluttered MNIST generated from the MNIST test split (10,000 digits): fixed folds of 8,000 / "
            "1,000 / 1,000 digits, clutter from the same fold, one present image per digit and as many "
            "absent ones (generator seed 0 for every draw). Each draw (seed) takes its own masks: 1 % of the "
            "present training images (80), all of them the digit 9, as the paper's protocol; tags for every "
            "training image. The paper had about 595 masks from MNIST's 60k training digits, 7.4 times ours. "
            "Model selection on the validation fold's present images with the same rule (10 masks of 9s, "
            "drawn once). Dice pooled over the split (the authors' `dice_global`); the per-image mean is in "
            "the JSON. Quick mode: quarter widths (encoder 8-16-32-64-128 at 48x48, 4-...-128 at 128x128; "
            "critics 32-32-64-128; MLP 64 units), batches of 8 present + 8 absent + 8 labeled images, 12 x "
            "100 iterations at 48x48 and 10 x 100 at 128x128 (about 1.2 present-image passes; the paper: 300 "
            "passes of batch 20), every row on the same iterations, generator lr 1e-3 for every row (the "
            "paper's 1e-4 is meant for 100x more iterations; chosen on the validation fold with seg-only and "
            "proposed, one seed, re-checked with the AE baseline, benchmarks/dev/translation-mnist-dev.md; the "
            "critics keep 1e-3, so the paper's 10:1 critic:generator ratio becomes 1:1); one seed at 128x128. "
            "Baselines as appendix A: layer-normed decoders, no norm MLP, no spectral norm (the proposed "
            "model and sep dec: spectral norm on every network, norm MLP); one critic per scale. `proposed, skip "
            "compress` is `proposed | 48x48 hard` (the same configuration, trained once). `paper` = Table 1 x "
            "100 (the number of runs behind the paper's std is not stated). The 80 masks come as their own "
            "stream of 8 images every step (the authors' code mixes the few labeled images into the present "
            "batch, so its Dice term acts in about a fifth of the steps): every row gets the same, but the "
            "shared decoder sees more supervised signal than in the paper."
        ),
    )


@register_table("translation-acdc-rv")
def translation_acdc_rv() -> Table:
    rows = [
        Row(name, "1 % of the RV slices", overrides)
        for name, overrides in TRANSLATION_ROWS[:3]  # seg-only, AE baseline, proposed
    ]
    return Table(
        name="translation-acdc-rv",
        title="Presence/absence translation on ACDC: RV Dice from tags on every slice and masks on 1 % of the RV slices",
        recipe="translation-acdc-rv",
        rows=rows,
        metric="dice/1",
        metric_label="RV Dice (%) per test volume (20 patients x 2 frames)",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        notes=(
            "SSL4MIS split of ACDC, the right ventricle against everything else. Of the 1312 training slices "
            "1062 show the RV at native resolution and 250 do not (mostly apical and basal slices: the two "
            "domains differ by slice level as well as by the RV); tags are read from the resized masks, where "
            "a slice or two with a sliver of RV turns absent. Each draw masks 1 % of the present slices "
            "(11 slices); every training slice carries its tag. Model selection on the RV Dice of the 10 "
            "dense validation patients' volumes, as the other ACDC tables (so selection sees more RV labels than "
            "the 11 training masks; the same for every row). Masks come as their own stream of 8 slices every "
            "step (the authors' code mixes the few labeled images into the present batch), the same for every "
            "row. Quick mode: 96x96, the 128x128 "
            "architecture at quarter width (encoder 4-8-16-32-64-128, critics 32-32-64-128), 10 x 100 "
            "iterations of 8 labeled + 8 present + 8 absent slices for every row, generator lr 1e-3 (as "
            "translation-mnist's quick mode), the recipe's weak augmentation. No published number exists for this setting."
        ),
    )


#: Enguehard et al. (2019): moons accuracy after SSLDEC (Fig. 4); MNIST error (%) by label count (Fig. 5)
SSLDEC_PAPER = {"moons": 99.8, 100: 0.88, 1000: 0.46}
SSLDEC_MEMBERS = "SSLDEC, ensemble members | MNIST, 100 labels, draw 0"


#: the control for the unlabeled epochs (not an exactly equal budget: see the table notes): SSLDEC's
#: schedule without its unlabeled epochs (``method.targets: none``)
SSLDEC_CONTROL = "supervised, SSLDEC's labeled schedule"


#: the MNIST rows' metric and draws
SSLDEC_MNIST = dict(
    recipe="ssldec-mnist", metric="error", metric_label="error (%), 2000 test digits", seeds=[0, 1, 2]
)


def ssldec_mnist_rows(
    n: int, extra: dict | None = None, lower: str = "supervised (pre-training only)"
) -> list[Row]:
    """The four MNIST rows at ``n`` labels (pre-training only, the control, the pseudo model, SSLDEC),
    every one with the overrides ``extra``."""
    setting = f"MNIST, {n} labels"
    base = {"data.split.labeled": n, "data.split.val_from_labeled": n // 10, **(extra or {})}
    return [
        Row(lower, setting, {**base, "method.max_rounds": 0}, **SSLDEC_MNIST),
        Row(SSLDEC_CONTROL, setting, {**base, "method.targets": "none"}, **SSLDEC_MNIST),
        Row(
            "pseudo model",
            setting,
            {**base, "method.targets": "hard", "model.head": "linear"},
            **SSLDEC_MNIST,
        ),
        Row("SSLDEC", setting, base, paper=SSLDEC_PAPER[n], **SSLDEC_MNIST),
    ]


def ssldec_rows() -> list[Row]:
    # MNIST first: the provenance's throughput measures the first row's model
    rows = ssldec_mnist_rows(100) + ssldec_mnist_rows(1000)
    mnist = SSLDEC_MNIST
    base = {"data.split.labeled": 100, "data.split.val_from_labeled": 10}
    members = {**mnist, "seeds": [0, 1, 2, 3, 4]}
    method, setting = SSLDEC_MEMBERS.split(" | ")
    rows += [
        # member 0 is `SSLDEC | MNIST, 100 labels` seed 0 (the same configuration: one run, cached)
        Row(method, setting, base, draw=0, **members),
        Row(
            "SSLDEC, ensemble of 5",
            setting,
            base,
            postprocess="ensemble",
            reuse=SSLDEC_MEMBERS,
            paper=SSLDEC_PAPER[100],
            **members,
        ),  # fmt: skip
    ]
    moons = dict(recipe="ssldec-moons", metric="accuracy", metric_label="accuracy (%), 1000 fresh points")
    rows += [
        Row("supervised (pre-training only)", "moons, 8 labels", {"method.max_rounds": 0}, **moons),
        Row(SSLDEC_CONTROL, "moons, 8 labels", {"method.targets": "none"}, **moons),
        Row("SSLDEC", "moons, 8 labels", {}, paper=SSLDEC_PAPER["moons"], **moons),
    ]
    return rows


def _ssldec_extras(ctx: BenchContext) -> dict[str, Any]:
    """Fig. 4 (moons boundaries before / after SSLDEC, draw 0) and Fig. 7 (PCA of the MNIST embeddings
    of 1000 unlabeled training digits after pre-training and after SSLDEC, 100 labels, draw 0), from
    the last states the table scores."""
    import numpy as np
    import torch

    from semiseg.bench.figures import embedding_figure, moons_figure
    from semiseg.data import prepare_data
    from semiseg.engine.run import load_trained

    out: dict[str, Any] = {}
    for name, setting in (("moons", "moons, 8 labels"), ("mnist", "MNIST, 100 labels")):
        keys = (f"supervised (pre-training only) | {setting}", f"SSLDEC | {setting}")
        if not all((k, 0) in ctx.run_dirs for k in keys):
            continue
        loaded = [load_trained(ctx.trained(k, 0) / "last.pt") for k in keys]
        models = [("after pre-training on the labeled points", loaded[0][0]), ("after SSLDEC", loaded[1][0])]
        cfg = loaded[1][1]
        data = prepare_data(cfg, ctx.data_root, bundle=ctx.cache.bundle(cfg))
        figure = ctx.results_dir / f"{ctx.table.name}-{name}.png"
        if name == "moons":
            labeled = {r.id for r in data.split.labeled}
            records = data.split.unlabeled
            points = np.stack([r.image[:, 0, 0] for r in records])
            moons_figure(
                models, points, [r.label for r in records], [r.id in labeled for r in records], figure
            )
        else:
            records = data.split.unlabeled[:: max(1, len(data.split.unlabeled) // 1000)][:1000]
            images = torch.from_numpy(np.stack([r.image for r in records]))
            embedding_figure(models, images, [r.label for r in records], figure)
        out[f"figure_{name}"] = str(figure)
    return out


@register_table("ssldec")
def ssldec() -> Table:
    return Table(
        name="ssldec",
        title="SSLDEC: two half-moons accuracy and MNIST error, the model as training left it",
        recipe="ssldec-mnist",
        rows=ssldec_rows(),
        metric="error",
        metric_label="error (%)",
        seeds=[0, 1, 2, 3, 4],
        quick_seeds=[0, 1, 2, 3, 4],
        score="last",
        extras=_ssldec_extras,
        notes=(
            "Each seed is a draw of the labeled points and a training seed. Moons: 1000 points (noise 0.1), 4 "
            "labeled per moon, all 1000 in the unlabeled stream, accuracy on 1000 fresh points (the paper "
            "reports the accuracy of Fig. 4 without saying on which points); 5 draws; an MLP (4 x 10 ReLU, 2 "
            "outputs, the clustering layer), 300 pre-training epochs from lr 1e-2 (the paper gives no moons "
            "schedule) and rounds at 1e-3, with the same L2 1e-4 on the weights as the CNN (the paper names it "
            "for the CNN only). MNIST: the 8,000 "
            "training digits of the fold shared with the translation tables, tested on the other 2,000 "
            "(the paper: 60,000 training digits, tested on 10,000); 100 labels = 90 to train + 10 to "
            "validate, 10 and 1 per digit (1000 = 900 + 100); 3 draws. No model selection (the paper "
            "needs none, and 10 validation digits could not do it): every value is the model as "
            "training left it. `supervised (pre-training only)` is SSLDEC's pre-training alone (the "
            "lower bound); `supervised, SSLDEC's labeled schedule` is the control for the unlabeled epochs: "
            "SSLDEC's rounds without them, with the same retraining rule (same rate, threshold and caps, every "
            "round). It is not an exactly equal budget: a round retrains until the training accuracy reaches "
            "the threshold, and without the unlabeled epochs, which lower that accuracy, the control can "
            "retrain less than SSLDEC (each run's optimizer steps by phase are in the JSON, "
            "`steps_by_phase`); `pseudo model` is the same schedule with one-hot arg-max targets and no "
            "clustering layer (the paper's pseudo model, from its segmentation section). Rounds end when fewer "
            "than 0.1 % of the items change class or after 100 (moons 50); retraining is capped at 50 epochs; the "
            "rounds share one Adam state, fresh after pre-training; a class no item is predicted as is left "
            "out of the balanced subset P'. The ensemble "
            "averages the class probabilities of 5 models trained with seeds 0-4 on draw 0 (member 0 "
            "is the SSLDEC row's seed 0); the paper's MNIST numbers appear to come from such an "
            "ensemble (section IV-A), over 10 draws, so the 1,000-label `paper` value (0.46) is probably an "
            "ensemble's beside our single models. Quick mode: the CNN at quarter width, at most 15 rounds of "
            "at most 20 retraining epochs (the 100 % training-accuracy threshold is measured on clean images "
            "in eval mode and is seldom reached, so the cap usually ends a retraining). `paper` = Fig. 4 "
            "(moons accuracy) and Fig. 5 (MNIST error)."
        ),
    )


#: pre-training until the labeled digits are fitted (method.pretrain_threshold), the follow-up of the
#: ssldec table's diagnosis (benchmarks/dev/ssldec-dev.md)
SSLDEC_FIT = {"method.pretrain_threshold": 1.0}


def ssldec_fit_rows() -> list[Row]:
    return ssldec_mnist_rows(100, SSLDEC_FIT, lower="supervised (pre-trained until fitted)")


@register_table("ssldec-fit")
def ssldec_fit() -> Table:
    # the ssldec table (recipe, metric, scoring of the last state) with its MNIST-100 rows pre-trained
    # until fitted; no figures (they read the ssldec rows)
    return dataclasses.replace(
        ssldec(),
        name="ssldec-fit",
        title="SSLDEC on MNIST with 100 labels, pre-trained until the labeled digits are fitted",
        rows=ssldec_fit_rows(),
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=None,
        notes=(
            "The `ssldec` table's MNIST rows at 100 labels with one change: after the recipe's 100 "
            "pre-training epochs a `pretrain_fit` phase trains on the 90 labeled digits (at the "
            "pre-training's last rate, 1e-4, with its Adam state) until all are classified correctly "
            "(clean images, eval mode), at most 300 more epochs of one step (`method.pretrain_threshold: "
            "1.0`). Every row gets it, so the rows compare as in `ssldec`. Why: in `ssldec` the quick "
            "(quarter-width) network's clustering head fitted about 76 % of the labeled digits after "
            "pre-training, and SSLDEC's targets of eq. 2 come from that model; a development run on "
            "training data only (benchmarks/dev/ssldec-dev.md) found the rounds helped from a 400-epoch "
            "pre-training. That run was made after the `ssldec` table's test numbers were known; the "
            "threshold is the paper's own retraining rule (100 % training accuracy), not a tuned value. "
            "Otherwise as `ssldec` (8,000 training digits, 2,000 test digits, 90 + 10 labels, 3 draws, "
            "no model selection, quick mode: quarter width, at most 15 rounds of at most 20 retraining "
            "epochs). `paper` = Fig. 5 (60,000 training digits)."
        ),
    )


#: the rows of ssldec-acdc (the paper's iSeg Figs. 9-11 are on other data and classes, WM / GM / CSF: no
#: `paper` column, its claim in the notes)
#: the control for the unlabeled epochs (as the ssldec table's), at the paper's claim's 1 and 2 patients only (CPU)
SSLDEC_ACDC_CONTROL = "lower bound, SSLDEC's labeled schedule"
SSLDEC_ACDC_CONTROL_PATIENTS = (1, 2)
SSLDEC_ACDC_ROWS = (
    ("lower bound (1/5 of the slices)", {"method.max_rounds": 0}),
    ("higher bound (all slices)", {"method.max_rounds": 0, "data.split.labeled_item_fraction": 1.0}),
    (SSLDEC_ACDC_CONTROL, {"method.targets": "none"}),
    ("pseudo model", {"method.targets": "hard", "model.head": "linear"}),
    ("SSLDEC per pixel", {}),
)
ACDC_CLASSES = (("dice/mean", "mean over RV/MYO/LV"), ("dice/1", "RV"), ("dice/2", "MYO"), ("dice/3", "LV"))
#: quick mode: the cap on a round's labeled retraining for the rows with rounds (the recipe's quick
#: section says 20 epochs of 40 iterations). Set on 2026-11-28 (eighteenth session) from the cost of the
#: first runs alone, before any of these rows had finished and with no validation or test value looked at:
#: every round of the first pseudo-model runs ran into the 20-epoch cap (the 0.95 balanced-accuracy
#: threshold was never met), about 1.4 h per run on one core, about 30 CPU-hours for the table against
#: the issue's ~10 h; at 5 epochs a run takes about a third of that
SSLDEC_ACDC_QUICK_RETRAIN = {"method.max_retrain_epochs": 5}


@register_table("ssldec-acdc")
def ssldec_acdc() -> Table:
    rows = []
    for metric, label in ACDC_CLASSES:  # the per-class rows reuse the mean's runs (one run per config)
        for n in (1, 2, 5):
            setting = f"{n} patient{'s' if n > 1 else ''}, {label}"
            for name, overrides in SSLDEC_ACDC_ROWS:
                if name == SSLDEC_ACDC_CONTROL and n not in SSLDEC_ACDC_CONTROL_PATIENTS:
                    continue
                rounds = overrides.get("method.max_rounds") != 0  # the rows that retrain in rounds
                rows.append(Row(name, setting, {"data.split.labeled": n, **overrides}, metric=metric,
                                metric_label=f"Dice (%), {label}",
                                quick_overrides=SSLDEC_ACDC_QUICK_RETRAIN if rounds else {}))  # fmt: skip
    return Table(
        name="ssldec-acdc",
        title="SSLDEC per pixel on ACDC: 1, 2 or 5 labeled patients with one fifth of their slices labeled",
        recipe="ssldec-acdc",
        rows=rows,
        metric="dice/mean",
        metric_label="Dice (%) per test volume (20 patients x 2 frames)",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        notes=(
            "The paper's iSeg protocol (section IV-F) on ACDC's SSL4MIS split: each draw picks 1, 2 or 5 of "
            "the 70 training patients and labels one fifth of each one's slices (evenly spaced over the "
            "patient's ED and ES slices in order, random offset per draw); the unlabeled pool is every "
            "other training slice. Lower bound = SSLDEC's supervised pre-training on those slices; higher "
            "bound = the same on every slice of the same patients; `lower bound, SSLDEC's labeled schedule` = "
            "SSLDEC's rounds without their unlabeled epochs (the same retraining rule, rate, threshold and "
            "caps, every round; at 1 and 2 patients): the control for the unlabeled epochs, not an exactly "
            "equal budget, since a round retrains only until the labeled slices' balanced pixel accuracy "
            "reaches the threshold, which without unlabeled epochs may already hold (each run's optimizer "
            "steps by phase are in the JSON, `steps_by_phase`; when no retraining epoch runs, the run is "
            "scored as pre-training left it); pseudo model = the same schedule with "
            "one-hot targets and no clustering layer. The rounds' unlabeled stream holds every training slice, "
            "the labeled fifth too with its masks unused (Alg. 1 predicts on L and U); a round's targets P "
            "come from a frozen copy of the model on the same augmented view the model is trained on. Model "
            "selection on the 10 validation patients' volumes (`last checkpoint` = the model as training "
            "left it). Test = 20 patients x 2 frames. "
            "The per-class rows are the same runs as the mean rows. Quick mode: 128x128, UNet-16, batch 8, "
            "pre-training 10 x 40 iterations, 8 rounds of 60 unlabeled iterations and at most 5 x 40 "
            "labeled iterations (the cap ends almost every retraining; set from the first runs' cost, with no "
            "result seen: at the recipe's 20 x 40 the table would take about 30 CPU-hours). "
            "Per pixel, a round's unlabeled epoch is a fixed number of iterations (quick: "
            "60 x 8 slices, about a third of the training slices; full: 200 x 12, about 1.8 passes), not one "
            "pass over P'; the balanced subset keeps each pixel with probability n_min / n_c of its predicted "
            "class (equal counts on average, not exactly), and the background is one of the balanced classes "
            "(iSeg's three classes had no background). The paper's iSeg numbers (Figs. 9-11: WM / GM / CSF at 1, "
            "2, 5 volumes; SSLDEC above the lower bound and the pseudo model at 1 and 2 volumes) are on other "
            "data and classes, so there is no `paper` column."
        ),
    )


#: the IODA paper's Table 1: the best 3-layer network, IODA at 2048 hidden units (test MSE 3.48e-2; the
#: setup markers of the other Table 1 values are lost in our copy of the paper)
IODA_PAPER_2048 = 3.48
#: Table 2's best 2048-1024-2048 network (test MSE 3.62e-2; its setup is not attributable in our copy)
IODA_PAPER_4LAYER = 3.62
IODA_SETUPS = (("NDA", 0, 0), ("IDA", 1, 0), ("output pre-training only", 0, 1), ("IODA", 1, 1))
#: quick fine-tuning epochs per hidden size (CPU; the paper: at most 1000 with validation selection)
#: (timed on idle cores, 2 threads, batch 100: a 2048-hidden fine-tuning step 0.45 s, an input
#: autoencoder step 0.47 s; 256 hidden: 0.07 / 0.05 s; the quick table is then about 3.5 core-hours of
#: steps, about 4 with validation, checkpoints and rejected epochs: about 2 h on 2 cores)
IODA_QUICK_EPOCHS = {256: 250, 2048: 100}
#: the epochs of Fig. 6 (the paper: 10, 100, 1000 iterations; quick mode stops at 250), kept at 256 hidden
IODA_FIGURE_EPOCHS = [10, 100, 250, 1000]
#: Fig. 6's validation image (the paper's example #10)
IODA_FIGURE_IMAGE = 10


def ioda_rows() -> list[Row]:
    rows = []
    for hidden in (256, 512, 1024, 2048):
        for name, k, j in IODA_SETUPS:
            overrides = {
                "model.hidden": [hidden, hidden],
                "method.input_layers": k,
                "method.output_layers": j,
            }
            if hidden == 256 and name != "output pre-training only":  # Fig. 6: NDA, IDA, IODA
                overrides["train.save_epochs"] = IODA_FIGURE_EPOCHS
            paper = IODA_PAPER_2048 if (hidden, k, j) == (2048, 1, 1) else None
            quick = {"train.epochs": IODA_QUICK_EPOCHS[hidden]} if hidden in IODA_QUICK_EPOCHS else {}
            rows.append(Row(name, f"3 layers, {hidden} hidden", overrides, paper=paper, quick_overrides=quick,
                            full_only=hidden not in IODA_QUICK_EPOCHS))  # fmt: skip
    rows.append(Row("IODA (2 input + 1 output)", "4 layers, 2048-1024-2048",
                    {"model.hidden": [2048, 1024, 2048], "method.input_layers": 2, "method.output_layers": 1},
                    paper=IODA_PAPER_4LAYER, quick_overrides={"train.epochs": IODA_QUICK_EPOCHS[2048]}))  # fmt: skip
    return rows


def _ioda_extras(ctx: BenchContext) -> dict[str, Any]:
    """Fig. 6: NDA, IDA and IODA (256 hidden, seed 0) on validation image 10 after the saved epochs."""
    import torch

    from semiseg.bench.figures import snapshot_grid
    from semiseg.data import prepare_data
    from semiseg.engine.run import load_trained

    snapshots: dict[str, dict[int, Any]] = {}
    cfg = None
    for name in ("NDA", "IDA", "IODA"):
        key = f"{name} | 3 layers, 256 hidden"
        if (key, 0) not in ctx.run_dirs:
            return {}
        run_dir = ctx.trained(key, 0)
        snapshots[name] = {}
        for epoch in IODA_FIGURE_EPOCHS:
            path = run_dir / f"epoch_finetune_{epoch}.pt"
            if path.is_file():
                method, cfg, _ = load_trained(path)
                snapshots[name][epoch] = method
    if cfg is None:
        return {}
    record = prepare_data(cfg, ctx.data_root, bundle=ctx.cache.bundle(cfg)).val[IODA_FIGURE_IMAGE]
    figure = ctx.results_dir / f"{ctx.table.name}-fig6.png"
    snapshot_grid(snapshots, torch.from_numpy(record.image), torch.from_numpy(record.mask), figure)
    return {"figure": str(figure), "figure_image": f"validation {record.id}"}


@register_table("ioda-textures")
def ioda_textures() -> Table:
    return Table(
        name="ioda-textures",
        title="IODA on the texture-ring problem: test MSE of the ring map (x 1e-2)",
        recipe="ioda-textures",
        rows=ioda_rows(),
        metric="mse",
        metric_label="test MSE (x 1e-2) of the output probabilities, 500 images",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=_ioda_extras,
        notes=(
            "128x128 images of a brick ring on gravel (scikit-image's textures, each mapped from its own grey-level "
            "range to [0, 1]; the paper: Brodatz 17 on 77), "
            "500 train / 500 validation / 500 test, fixed (generator seed 0); each seed is a network "
            "initialisation, shared by the setups of one size (the autoencoder halves draw no random "
            "numbers), so the rows are paired. Fully connected networks, tanh hidden units, a sigmoid per "
            "pixel, Glorot-uniform weights, the input centred before the first layer (model.input_offset 0.5, "
            "beyond the paper: without it every network stayed on the mean ring map in development, "
            "benchmarks/dev/ioda-dev.md); gradient descent on batches of 100 from learning rate 10 with the "
            "paper's adaptive rule (x1.25 after 5 improving epochs; an epoch whose updates do not lower the "
            "training loss on its batches is rolled back and rerun at lr/1.25, at most 10 attempts; 1.25 "
            "and 5 are Crino's constants, the cap ours). Autoencoders: tied weights, sigmoid outputs with "
            "cross-entropy (as Crino's; the paper does not say), at most 300 (input) / 100 (output) epochs, "
            "each selected on its validation reconstruction; fine-tuning selected on the validation MSE; "
            "validation every 5th epoch. Quick mode: at most 50 / 30 autoencoder epochs and 250 (256 "
            "hidden) or 100 (2048) fine-tuning epochs (the paper: up to 1000), so the quick ordering also "
            "measures convergence speed; 512 and 1024 hidden units in full mode only. `paper`: the best "
            "3-layer network of Table 1 (IODA, 2048 hidden, "
            "3.48e-2); the rest of Table 1, as far as our copy of the paper can be read: 2048 hidden 3.48 / "
            "4.59 / 5.75 / 6.79 / 9.37 / 9.40, 256 hidden 4.85 / 6.75 / 7.98 / 8.75 / 12.8 / 14.1 (x 1e-2, "
            "six setups each, in increasing order, setups not attributable); on our validation images a "
            "constant output scores about 14.1 and the mean ring map 12.4. Our textures differ: the ordering is the claim, "
            "the value a reference. The 4-layer row's `paper` is Table 2's best 2048-1024-2048 network (3.62e-2; "
            "which pre-training it had is not attributable in our copy). Table 1 also has the setups with 2 "
            "input or 2 output layers; the issue asks for the four above."
        ),
    )


#: the shape prior's settings on ACDC (quick: 3 autoencoder epochs of 40 iterations at 128x128 is short;
#: 10 epochs of the labeled masks); its weight is tuned on validation (Tuning below)
SHAPE_PRIOR = {"name": "shape_prior", "weight": 0.1, "ae_epochs": 30, "streams": ["labeled", "unlabeled"]}
SHAPE_PRIOR_WEIGHTS = (0.01, 0.1, 1.0)
#: "the best of" the semi-supervised methods (issues 14 and 15): the one issue 11's bar chooses on
#: semi-acdc, the method with at least 3 draws and the best mean validation Dice of its runs' selected
#: checkpoints at 3 labeled patients (benchmarks/issue11_bar.py): FixMatch, 0.679 (UniMatch 0.668, CPS
#: 0.668, mean teacher 0.650, BCP 0.573; at 7 patients, one run each, FixMatch 0.787 and UniMatch 0.739).
#: Chosen on validation only, before any run of shape-prior-acdc or acdc-3d (which first had UniMatch,
#: the method issue 11 composes with the seed priors).
BEST_SEMI = ("FixMatch", "fixmatch-acdc")
#: the semi-supervised method the prior is added to
SHAPE_PRIOR_SEMI = BEST_SEMI
SHAPE_PRIOR_METRICS = (
    ("dice/mean", "Dice (%), mean over RV/MYO/LV", 100.0),
    ("dice/2", "Dice (%), myocardium (the ring)", 100.0),
    # the SSL4MIS h5 files carry no spacing: HD95 in voxels of each volume's native grid (VOXEL_UNIT)
    ("hd95_px/mean", "HD95 (voxels), mean over RV/MYO/LV", 1.0),
    ("hd95_px/2", "HD95 (voxels), myocardium", 1.0),
)


def _with_prior(weight: float) -> list[dict[str, Any]]:
    return [{**SHAPE_PRIOR, "weight": weight}]


def shape_prior_rows() -> list[Row]:
    rows = []
    for metric, label, _ in SHAPE_PRIOR_METRICS[
        :2
    ]:  # percentages; HD95 (voxels) of the same runs: the JSON extras
        rows += _shape_prior_metric_rows(metric, label)
    return rows


def _shape_prior_metric_rows(metric: str, label: str) -> list[Row]:
    rows = []
    for n in (3, 7):
        setting = f"{patients(n)}, {label.split(', ')[-1]}"
        base = {"data.split.labeled": n, "data.split.first_draw": "listed", "train.eval_last": True}
        sup = dict(recipe="supervised-acdc", metric=metric, metric_label=label)
        prior = {"data.split.unlabeled": "rest", "method.regularizers": _with_prior(SHAPE_PRIOR["weight"])}
        control = {**prior, "method.regularizers": _with_prior(0.0)}
        rows += [
            Row("supervised", setting, {**base, **SUP_FULL}, quick_overrides=SUP_QUICK, **sup),
            Row(
                "supervised + shape prior",
                setting,
                {**base, **SUP_FULL, **prior},
                quick_overrides=SUP_QUICK,
                tuned=True,
                **sup,
            ),  # fmt: skip
        ]
        if n == 3:  # the prior's own effect: the same passes, phases and batches at weight 0
            rows.append(Row("supervised + shape prior at weight 0", setting, {**base, **SUP_FULL, **control},
                            quick_overrides=SUP_QUICK, **sup))  # fmt: skip
        name, recipe = SHAPE_PRIOR_SEMI
        semi = dict(recipe=recipe, metric=metric, metric_label=label)
        rows += [
            Row(name, setting, base, **semi),
            Row(f"{name} + shape prior", setting, {**base, "method.regularizers": _with_prior(0.1)}, tuned=True,
                **semi),
        ]  # fmt: skip
        if n == 3:
            rows.append(Row(f"{name} + shape prior at weight 0", setting,
                            {**base, "method.regularizers": _with_prior(0.0)}, **semi))  # fmt: skip
    return rows


@register_table("shape-prior-acdc")
def shape_prior_acdc() -> Table:
    first = f"supervised + shape prior | {patients(3)}, mean over RV/MYO/LV"
    return Table(
        name="shape-prior-acdc",
        title="A label-autoencoder shape prior on ACDC: supervised and FixMatch with and without it",
        recipe="supervised-acdc",
        rows=shape_prior_rows(),
        metric="dice/mean",
        metric_label="Dice (%)",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        tuning=Tuning(row=first, grid={"method.regularizers": [_with_prior(w) for w in SHAPE_PRIOR_WEIGHTS]}),
        extras=_shape_prior_extras,
        notes=(
            "The IODA paper's idea (learn the label space from masks alone) for a convolutional segmenter: a "
            "small convolutional autoencoder is trained on the labeled masks (denoising: 20 % of the pixels "
            "set to random classes, blurred) before the segmenter, selected on the validation masks' "
            "reconstruction Dice, then frozen; the segmenter's loss adds the distance between the codes of "
            "its prediction and of the truth on labeled slices, and between its prediction and the "
            "autoencoder's reconstruction on unlabeled slices. semi-acdc's protocol (SSL4MIS split, draw 0 = "
            "the listed patients, UNet-16, quick 128x128, 25 x 40 iterations). The prior's weight (0.01, "
            "0.1, 1) is chosen on validation Dice at 3 patients, seed 0, and used for every prior row. At 3 "
            "patients each prior row has a control with the prior at weight 0: the same autoencoder phase, "
            "network passes (the supervised row's unlabeled slices, FixMatch's weak views) and batches, "
            "so the prior's own effect is the difference between the two; at 7 patients there is no such "
            "control (CPU), so a prior row's difference from the row without the prior also includes the "
            "autoencoder phase's shift of the batch order and the unlabeled slices in the segmenter's batch-norm "
            "statistics (supervised training: in its batches; FixMatch, whose quick recipe labels with an EMA "
            "teacher: the student's own pass over the weak views, which the prior reads). "
            "FixMatch is the best semi-supervised method by issue 11's rule, chosen on validation only: of "
            "semi-acdc's methods with 3 draws at 3 patients, the best mean validation Dice of the runs' selected "
            "checkpoints (0.679; UniMatch 0.668, CPS 0.668). "
            "The myocardium is a ring like the IODA toy problem: its rows are the same "
            "runs as the mean rows; HD95 of the same runs is in the JSON extras, in voxels of each volume's native "
            "grid with the count of missed classes (the h5 files carry no spacing; ACDC's pixels are about "
            "1.4-1.7 mm, a slice step counts as one voxel)."
        ),
    )


def _shape_prior_extras(ctx: BenchContext) -> dict[str, Any]:
    """HD95 (voxels), mean and myocardium, of every run of the mean rows (the same runs), by row, with
    the count of missed classes beside it (:func:`_missed`)."""
    from semiseg.bench.stats import summarise

    out: dict[str, Any] = {}
    missed: dict[str, dict[str, int]] = {}
    for metric, label, scale in SHAPE_PRIOR_METRICS[2:]:
        by_row: dict[str, Any] = {}
        for (key, _seed), run_dir in ctx.run_dirs.items():
            if not key.endswith("mean over RV/MYO/LV"):
                continue
            row = key.rsplit(",", 1)[0]
            result = (ctx.cache.read_record(run_dir) or {}).get("result") or {}
            value = result.get("test", {}).get(metric)
            if value is not None:
                by_row.setdefault(row, []).append(value * scale)
            if metric == SHAPE_PRIOR_METRICS[2][0]:
                _count_missed(missed.setdefault(row, {}), result, metric)
        out[label] = {row: summarise(values) for row, values in sorted(by_row.items())}
    return {
        "hd95": out,
        "hd95_unit": VOXEL_UNIT,
        "missed_classes": {**MISSED_NOTE, **dict(sorted(missed.items()))},
    }


#: how the ACDC tables' distances are measured (the SSL4MIS h5 files carry no spacing)
VOXEL_UNIT = (
    "voxels of each volume's native grid, a slice step counting as one voxel like an in-plane pixel (the "
    "SSL4MIS evaluation's convention: medpy's hd95 without a spacing); ACDC's pixels are about 1.4-1.7 mm "
    "and its slices 5-10 mm. HD95 is MONAI's (the larger of the two directed 95th percentiles; medpy takes "
    "the 95th percentile of both directions pooled)."
)
MISSED_NOTE = {
    "note": (
        "test volumes x classes (RV, MYO, LV) with no HD95 because the class is missing from the prediction "
        "(or only from the truth), summed over the row's runs; the HD95 means leave those out, so a row that "
        "misses more classes can show a smaller HD95"
    )
}


def _count_missed(counts: dict[str, int], result: dict[str, Any], metric: str) -> None:
    """Add to ``counts`` the (volume, class) pairs of ``result``'s test cases whose ``metric`` per
    class is undefined (nan: the class is in one of prediction and truth only), and the pairs seen."""
    prefix = metric.split("/")[0] + "/"
    for case in result.get("test_cases") or []:
        for name, value in case.items():
            if name.startswith(prefix) and not name.endswith("/mean") and isinstance(value, float):
                counts["missed"] = counts.get("missed", 0) + int(math.isnan(value))
                counts["pairs"] = counts.get("pairs", 0) + 1


# ------------------------------------------------------------------------------------------ 3D
#: a 2D ACDC recipe moved to volumes as supervised-acdc-3d and unimatch-acdc-3d are (data, network,
#: inference, patches per stream); quick: their quick patch size and width
TO_3D = {
    "data.dataset": "acdc_3d", "data.image_size": [-1, 256, 256], "data.patch_size": [8, 256, 256],
    "data.foreground_ratio": 0.33, "model.spatial_dims": 3, "model.inplane_levels": 2,
    "inference": {"mode": "auto", "overlap": 0.5, "blend": "gaussian"}, "train.batch_size": 2,
}  # fmt: skip
TO_3D_QUICK = {"data.image_size": [-1, 128, 128], "data.patch_size": [8, 128, 128], "model.width": 8,
               "train.batch_size": 2}  # fmt: skip
#: (row name, recipe, overrides, quick overrides) of acdc-3d: the 2D network on slices against the 3D
#: one on patches, supervised and the best semi-supervised method (:data:`BEST_SEMI`)
ACDC_3D_ROWS = (
    ("supervised, 2D UNet (slices)", "supervised-acdc", {}, {}),
    ("supervised, 3D UNet (patches)", "supervised-acdc-3d", {}, {}),
    (f"{BEST_SEMI[0]}, 2D UNet (slices)", BEST_SEMI[1], {}, {}),
    (f"{BEST_SEMI[0]}, 3D UNet (patches)", BEST_SEMI[1], TO_3D, TO_3D_QUICK),
)
ACDC_3D_METRICS = (
    ("hd95_px/mean", "HD95 (voxels of the native grid), mean over RV/MYO/LV"),
    ("asd_px/mean", "ASD (voxels of the native grid), mean over RV/MYO/LV"),
)


def acdc_3d_rows() -> list[Row]:
    rows = []
    for n in (3, 7):
        base = {"data.split.labeled": n, "data.split.first_draw": "listed"}
        for name, recipe, to_3d, quick in ACDC_3D_ROWS:
            rows.append(Row(name, patients(n), {**base, **to_3d}, recipe=recipe, quick_overrides=quick,
                            quick_seeds=None if n == 3 else [0]))  # fmt: skip
    return rows


def _acdc_3d_extras(ctx: BenchContext) -> dict[str, Any]:
    """HD95 and ASD (voxels) of the same runs by row with the missed classes beside them
    (:func:`_count_missed`), and the peak resident memory of the 3D runs."""
    from semiseg.bench.stats import summarise

    distances: dict[str, dict[str, Any]] = {}
    memory: dict[str, list[float]] = {}
    missed: dict[str, dict[str, int]] = {}
    for metric, label in ACDC_3D_METRICS:
        by_row: dict[str, list[float]] = {}
        for (key, _seed), run_dir in ctx.run_dirs.items():
            record = ctx.cache.read_record(run_dir) or {}
            result = record.get("result") or {}
            value = result.get("test", {}).get(metric)
            if value is not None:
                by_row.setdefault(key, []).append(value)
            if metric == ACDC_3D_METRICS[0][0]:
                _count_missed(missed.setdefault(key, {}), result, metric)
            if metric == ACDC_3D_METRICS[0][0] and "3D" in key and result.get("peak_memory_mib") is not None:
                memory.setdefault(key, []).append(result["peak_memory_mib"])
        distances[label] = {row: summarise(values) for row, values in sorted(by_row.items())}
    peak = {row: max(values) for row, values in sorted(memory.items())}
    return {
        "distances": distances,
        "distance_unit": VOXEL_UNIT,
        "missed_classes": {**MISSED_NOTE, **dict(sorted(missed.items()))},
        "peak_memory_mib_3d": peak,
        "peak_memory_note": (
            "ru_maxrss of the bench process when each 3D run finished (the process may have trained other "
            "runs before): an upper bound on that run's peak resident memory"
        ),
    }


@register_table("acdc-3d")
def acdc_3d() -> Table:
    return Table(
        name="acdc-3d",
        title="ACDC volumes: a 2D UNet on slices against a 3D UNet on patches, supervised and FixMatch",
        recipe="supervised-acdc",
        rows=acdc_3d_rows(),
        metric="dice/mean",
        metric_label="Dice (%) per test volume (20 patients x 2 frames), mean over RV/MYO/LV",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1, 2],
        extras=_acdc_3d_extras,
        notes=(
            "SSL4MIS split (70 training patients, 10 validation, 20 test); n labeled patients (draw 0 = the "
            "first listed, as semi-acdc), the other training patients unlabeled for FixMatch (the best "
            "semi-supervised method by issue 11's rule, chosen on validation only: of semi-acdc's methods with 3 "
            "draws at 3 patients, the best mean validation Dice, 0.679; UniMatch 0.668). 2D rows: "
            "semi-acdc's quick recipes (UNet-16 on 128x128 slices, 8 labeled (+ 8 unlabeled) slices per step, "
            "25 x 40 steps, Adam 1e-3, poly; FixMatch with a 10-epoch supervised warm-up and an EMA teacher), "
            "volumes segmented slice by slice. 3D rows: the same frames as volumes (acdc_3d: the training "
            "slices stacked back; every slice resized to 128x128, the slice count kept), a 3D UNet-8 whose "
            "first two levels are in-plane only, 2 patches of 8 x 128 x 128 per stream and step (16 slices; "
            "on this CPU a step takes about the 2D step's time), a third of the patches centred on labeled "
            "foreground, the same steps, optimiser and in-plane augmentation; validation and test by sliding "
            "windows of the patch (Gaussian blending, overlap 0.5) resized back to each volume's grid. "
            "Model selection on the 10 validation patients' Dice. Quick mode trains 3 draws at 3 patients and "
            "one (draw 0) at 7 (the issue asks for at least 3 at 3 patients; an n=1 row supports no claim); "
            "full mode trains 3 at both with the recipes' full settings. HD95 and ASD (in the JSON extras, with the "
            "count of classes a row missed, which their means leave out) are in voxels of each volume's native "
            "grid, a slice step counting as one voxel (the SSL4MIS convention): the h5 files carry no spacing "
            "(ACDC's pixels are about 1.4-1.7 mm, its slices 5-10 mm). Both rows read the SSL4MIS files as "
            "stored (normalised per volume)."
        ),
    )
