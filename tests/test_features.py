"""Feature fields (fieldcraft.tasks.nerf.features): distillation, queries, edits, files, command line.

The quantitative tests use a scene whose answers are known exactly: a NeRF model whose radiance
field is replaced by two analytic opaque balls (red A at x = -0.5, blue B at x = +0.5), so
geometry is exact and any error is the feature field's. Its feature maps are the one-hot label of
what each pixel's ray meets first (A, B or nothing), computed by ray-sphere intersection."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fieldcraft.data.cameras import Cameras
from fieldcraft.data.scene import PosedImages
from fieldcraft.errors import FieldcraftError
from fieldcraft.render.cameras import look_at
from fieldcraft.tasks import nerf
from fieldcraft.tasks.nerf import features as ff
from fieldcraft.train import Budget, Run

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
CENTRES = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
RADIUS, SIGMA, SIZE = 0.4, 80.0, 40
COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


class TwoBalls(nn.Module):
    """A radiance field of two opaque balls (``density`` and ``forward`` as a RadianceField's)."""

    def __init__(self, aabb: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return SIGMA * ((x[:, None] - CENTRES).norm(dim=-1) < RADIUS).any(-1).float()

    def forward(self, x: torch.Tensor, d: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        nearest = (x[:, None] - CENTRES).norm(dim=-1).argmin(-1)
        return self.density(x), COLOURS[nearest]


def first_hit(rays, balls=(0, 1)) -> torch.Tensor:
    """Label of what each ray meets first among ``balls``: 0 (A), 1 (B) or 2 (nothing)."""
    o, d = rays.origins, rays.dirs
    best = torch.full((len(o),), math.inf)
    label = torch.full((len(o),), 2)
    for b in balls:
        oc = o - CENTRES[b]
        a, h, c = (d * d).sum(-1), (oc * d).sum(-1), (oc * oc).sum(-1) - RADIUS ** 2
        disc = h * h - a * c
        t = (-h - disc.clamp(min=0).sqrt()) / a
        hit = (disc > 0) & (t > 0) & (t < best)
        best, label = torch.where(hit, t, best), torch.where(hit, torch.tensor(b), label)
    return label


def cameras(angles_deg, heights) -> Cameras:
    eyes = [torch.tensor([3.0 * math.sin(math.radians(a)), h, 3.0 * math.cos(math.radians(a))])
            for a, h in zip(angles_deg, heights)]
    c2w = torch.stack([look_at(e) for e in eyes])
    return Cameras.from_fov(c2w, 0.8, SIZE, SIZE)


def scene(seed: int = 0) -> tuple[nerf.NerfModel, PosedImages, torch.Tensor]:
    """The two-ball model (occupancy grid filled from its density), 12 training views around it and
    their one-hot feature maps ``[12, H, W, 3]``."""
    aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])
    cfg = nerf.nerf_config("instant", grid_resolution=48)
    model = nerf.NerfModel(cfg, aabb, ndc=False)
    model.field = TwoBalls(aabb)
    torch.manual_seed(seed)
    for _ in range(4):  # jittered cell centres: a few passes mark every cell a ball reaches into
        model.grid.update(0, model.grid_density, model.step_size, cfg.grid_decay, cfg.grid_threshold, 256)
    model.requires_grad_(False)
    angles = [30.0 * k + 10 for k in range(12)]
    cams = cameras(angles, [(-1.0) ** k * 0.8 for k in range(12)])
    data = PosedImages(torch.zeros(12, SIZE, SIZE, 4), cams, [f"v_{k}.png" for k in range(12)], 1.0, 6.0, aabb)
    maps = torch.stack([torch.nn.functional.one_hot(first_hit(model.view_rays(cams, k, 1.0, 6.0)), 3).float()
                        .reshape(SIZE, SIZE, 3) for k in range(12)])
    return model, data, maps.half()


CONFIG = ff.FeatureFieldConfig(rays=512, encoding=ff.FeatureFieldConfig().encoding.replace(log2_table_size=14))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.manual_seed(0)
    model, data, maps = scene()
    out = tmp_path_factory.mktemp("features") / "features"
    run = Run.open(out, ff.TASK, CONFIG, budget=Budget(steps=60), device="cpu")
    field, summary = ff.distil(run, model, data, maps, progress=False)
    return model, data, maps, field, summary, out


def held_out(model):
    """A view between the training views (azimuth 95, height 0.3: B partly behind A)."""
    cams = cameras([-75.0], [0.3])
    rays = model.view_rays(cams, 0, 1.0, 6.0)
    return cams, rays


def test_distillation_learns_the_feature_maps_of_unseen_views(fitted):
    """On a held-out view the rendered features reproduce the one-hot maps: relative MSE (MSE over
    the maps' variance) falls from >= 0.5 at initialisation to below 0.1 after 60 steps."""
    model, data, maps, field, summary, _ = fitted
    cams, rays = held_out(model)
    truth = torch.nn.functional.one_hot(first_hit(rays), 3).float()
    var = float(truth.var(0).mean())
    fresh = ff.FeatureField(CONFIG, 3, model.grid.aabb)
    bg = torch.ones(1, 3)
    before = float(((ff.render_view(model, fresh, rays, bg, SIZE, SIZE)["features"].reshape(-1, 3) - truth) ** 2)
                   .mean()) / var
    after = float(((ff.render_view(model, field, rays, bg, SIZE, SIZE)["features"].reshape(-1, 3) - truth) ** 2)
                  .mean()) / var
    assert summary["steps"] == 60 and summary["channels"] == 3
    assert before >= 0.5 and after < 0.1, (before, after)


def test_a_clicked_pixel_selects_its_ball_and_edits_remove_or_recolour_it(fitted):
    """A pixel on ball A in training view 0 selects A in a held-out view: IoU of the selection
    (selected opacity > 0.5) with A's exact visible mask >= 0.9. A covers 182 pixels here, ~45 of
    them on its outline, where rays graze the ball across a couple of 0.02-long samples: 0.9
    leaves room for half the outline either way and none for selecting B (B's visible part alone
    would drop IoU below 0.6). Removing A shows, on at least 95 % of A's pixels, what the rays
    meet without A (B behind it, else the white background: the samples behind A are kept and
    A's inside goes with its surface); recolouring paints A's pixels."""
    model, data, maps, field, _, _ = fitted
    rays0 = model.view_rays(data.cameras, 0, 1.0, 6.0)
    label0 = first_hit(rays0).reshape(SIZE, SIZE)
    ys, xs = (label0 == 0).nonzero(as_tuple=True)
    y, x = int(ys.float().mean().round()), int(xs.float().mean().round())  # the middle of A
    assert label0[y, x] == 0
    q = ff.pixel_feature(model, field, data, 0, x, y)
    query = ff.Query(q[None], 0.9)
    _, rays = held_out(model)
    bg = torch.ones(1, 3)
    label = first_hit(rays)
    a_mask = label == 0
    assert 100 < int(a_mask.sum()) < 200 and int((first_hit(rays, (1,)) == 1)[a_mask].sum()) > 20  # B behind A
    plain = ff.render_view(model, field, rays, bg, SIZE, SIZE, query)
    sel = plain["selected"].reshape(-1) > 0.5
    iou = float((sel & a_mask).sum() / (sel | a_mask).sum())
    assert iou >= 0.9, iou
    # no edit: the render is the NeRF's own
    torch.testing.assert_close(plain["rgb"], model.render_image(rays, bg, SIZE, SIZE)["rgb"], atol=1e-5, rtol=0)
    removed = ff.render_view(model, field, rays, bg, SIZE, SIZE, query, ff.Edit("remove"))["rgb"].reshape(-1, 3)
    behind = first_hit(rays, (1,))
    expected = torch.where((behind == 1)[:, None], COLOURS[1], torch.ones(3))
    close = (removed[a_mask] - expected[a_mask]).abs().max(-1).values < 0.1
    assert float(close.float().mean()) >= 0.95, float(close.float().mean())
    others = label == 1  # B where it is in front: untouched
    torch.testing.assert_close(removed[others], plain["rgb"].reshape(-1, 3)[others], atol=0.05, rtol=0)
    green = ff.render_view(model, field, rays, bg, SIZE, SIZE, query, ff.Edit("recolour", (0.0, 1.0, 0.0)))["rgb"]
    painted = (green.reshape(-1, 3)[a_mask] - torch.tensor([0.0, 1.0, 0.0])).abs().max(-1).values < 0.1
    assert float(painted.float().mean()) >= 0.95, float(painted.float().mean())


def test_checkpoint_round_trip_and_resume(fitted, tmp_path):
    """The checkpoint restores the field exactly (weights, background feature, picture PCA);
    resuming with a larger budget continues from the stored step."""
    model, data, maps, field, _, out = fitted
    loaded, meta = ff.load_field(out, model.grid.aabb, "cpu")
    assert meta["task"] == "features" and meta["channels"] == 3 and meta["step"] == 60
    pts = torch.rand(500, 3) * 2 - 1
    assert torch.equal(loaded(pts), field(pts).detach())
    assert float(loaded.seen.max()) > 0.5 and float((loaded.seen > 0).float().mean()) < 0.2  # the balls' surfaces
    for name in ("background", "view_mean", "view_basis", "view_low", "view_high", "seen"):
        assert torch.equal(getattr(loaded, name).detach(), getattr(field, name).detach()), name
    small = tmp_path / "small"
    run = Run.open(small, ff.TASK, CONFIG.replace(rays=64), budget=Budget(steps=2), device="cpu")
    ff.distil(run, model, data, maps, progress=False)
    run = Run.open(small, ff.TASK, CONFIG, resume=True, budget=Budget(steps=4), device="cpu")
    assert run.config.rays == 64  # the stored settings
    _, summary = ff.distil(run, model, data, maps, progress=False)
    assert summary["steps"] == 4
    lines = [json.loads(s) for s in (small / "history.jsonl").read_text().splitlines()]
    assert lines and all(math.isfinite(r["loss"]) for r in lines)
    run = Run.open(small, ff.TASK, CONFIG, resume=True, budget=Budget(steps=5), device="cpu")
    with pytest.raises(FieldcraftError, match="fitted to 3 channels, the maps have 2"):
        ff.distil(run, model, data, maps[..., :2], progress=False)


def test_reference_kernels_distil_and_render(monkeypatch, tmp_path):
    """The PyTorch reference path (a GPU's) fits and renders finite features."""
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    model, data, maps = scene()
    run = Run.open(tmp_path / "ref", ff.TASK, CONFIG.replace(rays=256), budget=Budget(steps=3), device="cpu")
    field, summary = ff.distil(run, model, data, maps, progress=False)
    assert summary["steps"] == 3 and math.isfinite(summary["train_loss"])
    out = ff.render_view(model, field, held_out(model)[1], torch.ones(1, 3), SIZE, SIZE)
    assert out["features"].shape == (SIZE, SIZE, 3) and bool(torch.isfinite(out["features"]).all())


def _one_line(exc, *needles):
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_feature_map_files_and_bad_input(tmp_path):
    """Maps of any size and channel count are resized to the image; the first missing file, bad
    shapes, non-finite values, unreadable files and mismatched channel counts are one-line errors."""
    d = tmp_path / "maps"
    d.mkdir()
    np.save(d / "a.npy", np.arange(2 * 3 * 5, dtype=np.float16).reshape(2, 3, 5))
    np.save(d / "b.npy", np.ones((8, 6), dtype=np.int32))  # [h, w]: one channel
    maps = ff.load_feature_maps(d, ["a.png"], 4, 6)
    assert maps.shape == (1, 4, 6, 5) and maps.dtype == torch.float16
    assert ff.load_feature_maps(d, ["b.png"], 4, 3).shape == (1, 4, 3, 1)
    with pytest.raises(FieldcraftError) as e:
        ff.load_feature_maps(d, ["a.png", "c.png", "e.png"], 4, 6)
    _one_line(e, str(d / "c.npy"), "not found", "3 expected")
    with pytest.raises(FieldcraftError) as e:
        ff.load_feature_maps(d, ["a.png", "b.png"], 4, 6)
    _one_line(e, "b.npy", "1 channels", "a.npy has 5")
    np.save(d / "bad.npy", np.ones((2, 2, 2, 2)))
    np.save(d / "nan.npy", np.full((2, 2, 1), np.nan))
    np.save(d / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (d / "junk.npy").write_bytes(b"not an array")
    for name, needle in [("bad", "[height, width, channels]"), ("nan", "NaN"), ("obj", "not a readable"),
                         ("junk", "not a readable")]:
        with pytest.raises(FieldcraftError) as e:
            ff.load_feature_maps(d, [name + ".png"], 2, 2)
        _one_line(e, f"{name}.npy", needle)
    with pytest.raises(FieldcraftError, match="feature directory not found"):
        ff.load_feature_maps(tmp_path / "nowhere", ["a.png"], 2, 2)
    np.save(d / "q.npy", np.ones(4))
    with pytest.raises(FieldcraftError) as e:
        ff.read_query(d / "q.npy", 5)
    _one_line(e, "q.npy", "[5] or [k, 5]")
    np.save(d / "q0.npy", np.zeros((2, 5)))
    with pytest.raises(FieldcraftError, match="non-zero"):
        ff.read_query(d / "q0.npy", 5)
    for text in ("delete", "recolour", "recolour:1,2,0", "remove:1,0,0", "recolour:a,b,c"):
        with pytest.raises(FieldcraftError, match="--edit"):
            ff.Edit.parse(text)
    with pytest.raises(FieldcraftError, match="threshold"):
        ff.Query(torch.ones(1, 3), 1.5)


def test_pixel_queries_and_stratified_runs_are_checked():
    model, data, _ = scene()
    assert ff.parse_pixel("v_3,4,5", data) == (3, 4, 5) and ff.parse_pixel("v_3.png,4,5", data) == (3, 4, 5)
    assert ff.parse_pixel("2,0,39", data) == (2, 0, 39)
    for text, needle in [("1,2", "VIEW,X,Y"), ("zz,1,1", "no training image"), ("1,x,1", "integers")]:
        with pytest.raises(FieldcraftError, match=needle):
            ff.parse_pixel(text, data)
    field = ff.FeatureField(CONFIG, 3, model.grid.aabb)
    with pytest.raises(FieldcraftError, match="outside the 40x40"):
        ff.pixel_feature(model, field, data, 0, 40, 0)
    with pytest.raises(FieldcraftError, match="among the 12"):
        ff.pixel_feature(model, field, data, 12, 0, 0)
    vanilla = nerf.NerfModel(nerf.nerf_config("vanilla"), data.aabb, ndc=False)
    with pytest.raises(FieldcraftError, match="occupancy sampler"):
        ff.check_sampler(vanilla, "run")


def test_extractors_write_maps_that_share_one_basis(tmp_path):
    """patch-pca and daisy write float16 [H, W, dim] maps per image; the PCA is the training
    images' whatever the split (a view present in two splits gets the same map); a second
    extraction into the same folder needs --overwrite."""
    data = tmp_path / "lego"
    shutil.copytree(LEGO_MINI, data)
    meta = json.loads((data / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][1:3]  # val = two training views
    (data / "transforms_val.json").write_text(json.dumps(meta))
    rec = ff.extract_features(data, tmp_path / "pp", "patch-pca", 6, samples=4000, progress=False)
    assert rec["dim"] == 6 and rec["views"] == 13 and 0 < rec["explained_variance"] <= 1
    a = np.load(tmp_path / "pp" / "r_8.npy")
    assert a.shape == (100, 100, 6) and a.dtype == np.float16 and np.isfinite(a).all() and a.std() > 0
    ff.extract_features(data, tmp_path / "ppval", "patch-pca", 6, split="val", samples=4000, progress=False)
    assert sorted(p.name for p in (tmp_path / "ppval").glob("*.npy")) == ["r_16.npy", "r_8.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "ppval" / "r_8.npy"), a)
    with pytest.raises(FieldcraftError, match="--overwrite"):
        ff.extract_features(data, tmp_path / "pp", "patch-pca", 6, progress=False)
    ff.extract_features(data, tmp_path / "dy", "daisy", 4, samples=2000, radius=4, progress=False)
    assert np.load(tmp_path / "dy" / "r_8.npy").shape == (100, 100, 4)


def test_command_line(tmp_path, capsys):
    """extract / fit / render / eval features on lego_mini (a NeRF at a quarter of the maps'
    resolution) through the CLI; missing inputs exit 2 with one line."""
    from fieldcraft.cli import main

    run = tmp_path / "nerf"
    assert main(["fit", "nerf", str(LEGO_MINI), "--out", str(run), "--steps", "3", "--quiet", "--device", "cpu",
                 "--downscale", "4"]) == 0  # 25x25 views; the 100x100 maps are resized to them
    feats = tmp_path / "feats"
    capsys.readouterr()
    assert main(["fit", "features", str(run), "--features", str(feats), "--steps", "2", "--quiet"]) == 2
    assert "feature directory not found" in capsys.readouterr().err
    assert main(["extract", "features", str(LEGO_MINI), "--out", str(feats), "--dim", "4", "--quiet"]) == 0
    (feats / "r_16.npy").unlink()
    capsys.readouterr()
    assert main(["fit", "features", str(run), "--features", str(feats), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "r_16.npy: feature map not found" in err
    assert main(["extract", "features", str(LEGO_MINI), "--out", str(feats), "--dim", "4", "--quiet",
                 "--overwrite"]) == 0
    assert main(["fit", "features", str(run), "--features", str(feats), "--steps", "2", "--quiet",
                 "--rays", "128"]) == 0
    assert (run / "features" / "checkpoint.safetensors").is_file()
    out = tmp_path / "render"
    assert main(["render", "features", str(run), "--out", str(out), "--orbit", "--frames", "2", "--select-pixel",
                 "r_8,12,15", "--edit", "recolour:0,1,0", "--quiet"]) == 0
    record = json.loads((out / "render.json").read_text())
    assert record["views"] == 2 and record["query"]["pixel"] == {"view": "r_8.png", "x": 12, "y": 15}
    for sub in ("rgb", "features", "selection"):
        assert (out / sub / "frame_001.png").is_file()
    assert main(["eval", "features", str(run), "--features", str(feats), "--split", "train", "--limit", "2",
                 "--quiet"]) == 0
    metrics = json.loads((run / "features" / "eval" / "train" / "metrics.json").read_text())
    assert metrics["views"] == 2 and math.isfinite(metrics["relative_mse"]) and metrics["channels"] == 4
    query = tmp_path / "query.npy"
    np.save(query, np.load(feats / "r_0.npy")[50, 50].astype(np.float32))
    assert main(["render", "features", str(run), "--out", str(tmp_path / "byvec"), "--split", "val", "--limit", "1",
                 "--select-feature", str(query), "--threshold", "0.5", "--edit", "remove", "--quiet"]) == 0
    record = json.loads((tmp_path / "byvec" / "render.json").read_text())
    assert record["views"] == 1 and record["edit"] == {"kind": "remove"}
    assert (tmp_path / "byvec" / "selection" / "r_0.png").is_file()
    capsys.readouterr()
    assert main(["render", "features", str(run), "--out", str(out), "--orbit", "--frames", "1", "--edit",
                 "remove", "--quiet"]) == 2
    assert "needs a selection" in capsys.readouterr().err
