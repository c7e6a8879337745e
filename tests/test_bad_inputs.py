"""A corpus of bad inputs for every reader and command.

Each case writes one bad input into a temporary directory and runs the command line on it
(in-process, :func:`fieldcraft.cli.main`). The shared checker asserts exit status 2, exactly one
line on stderr (``fieldcraft: error: ...``) naming the file and the problem, no traceback, and
that nothing already on disk was damaged: every file of the test's directory (inputs and a
pre-populated output directory holding a finished run) is byte-identical afterwards. Fits run
with ``--overwrite`` on that finished run, so a bad input must be refused before the old run is
touched.

A second table holds unusual but valid images (palette, 1-bit, CMYK, 16-bit gray + alpha), which
must be read correctly. Inputs are generated here from code; only ``tests/data/nerf/lego_mini``
is copied.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fieldcraft.cli import main
from fieldcraft.io import checkpoint as ckpt
from fieldcraft.io.images import encode_png

LEGO = Path(__file__).resolve().parent / "data" / "nerf" / "lego_mini"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- writers of (bad) inputs


def _rgb(h=12, w=16, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray | None = None) -> Path:
    path.write_bytes(encode_png(_rgb() if arr is None else arr))
    return path


def write_pil(path: Path, mode: str = "RGB", arr: np.ndarray | None = None, **kw) -> Path:
    from PIL import Image

    Image.fromarray(_rgb() if arr is None else arr).convert(mode).save(path, **kw)
    return path


def write_tiff(path: Path, arr: np.ndarray | None = None, **kw) -> Path:
    import tifffile

    tifffile.imwrite(path, _rgb() if arr is None else arr, **kw)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def corrupt(path: Path, start: int, length: int = 64) -> Path:
    """Overwrite ``length`` bytes from ``start`` with a fixed pattern (the size is kept)."""
    data = bytearray(path.read_bytes())
    for i in range(start, min(len(data), start + length)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def write_obj(path: Path, vertices, faces) -> Path:
    lines = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def tetrahedron():
    v = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    f = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    return v, f


def write_ply_points(path: Path, n: int = 50, normals: np.ndarray | None = None, binary: bool = True) -> Path:
    pts = np.random.default_rng(0).normal(size=(n, 3)).astype("<f4")
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    cols = pts if normals is None else np.hstack([pts, normals.astype("<f4")])
    header = ("ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
              + "".join(f"property float {p}\n" for p in props) + "end_header\n")
    path.write_bytes(header.encode() + np.ascontiguousarray(cols, "<f4").tobytes())
    return path


def write_h5(path: Path, data=None, white=None, dark=None, theta=None, omit=()) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    arrays = {
        "/exchange/data": rng.uniform(100, 900, (6, 2, 16)).astype(np.float32) if data is None else data,
        "/exchange/data_white": np.full((2, 2, 16), 1000.0, np.float32) if white is None else white,
        "/exchange/data_dark": np.zeros((2, 2, 16), np.float32) if dark is None else dark,
    }
    if theta is not None:
        arrays["/exchange/theta"] = theta
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            if name not in omit:
                f.create_dataset(name, data=arr)
    return path


def blender_dataset(root: Path, n: int = 3) -> Path:
    """lego_mini's first ``n`` training views (transforms_train.json only)."""
    root.mkdir(parents=True)
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:n]
    (root / "train").mkdir()
    for fr in meta["frames"]:
        name = Path(fr["file_path"]).name + ".png"
        shutil.copy(LEGO / "train" / name, root / "train" / name)
    (root / "transforms_train.json").write_text(json.dumps(meta, indent=1))
    return root


def edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta, indent=1))  # json writes NaN as the (Python-readable) literal NaN


def nerfstudio_dataset(root: Path, n: int = 3) -> Path:
    """A nerfstudio transforms.json over lego_mini's first ``n`` training views."""
    blender_dataset(root, n)
    src = json.loads((root / "transforms_train.json").read_text())
    (root / "transforms_train.json").unlink()
    w = h = 100
    fl = 0.5 * w / np.tan(0.5 * src["camera_angle_x"])
    frames = [{"file_path": fr["file_path"][2:] + ".png", "transform_matrix": fr["transform_matrix"]}
              for fr in src["frames"]]
    meta = {"camera_model": "OPENCV", "fl_x": fl, "fl_y": fl, "cx": w / 2, "cy": h / 2, "w": w, "h": h,
            "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


def llff_poses(n: int = 3) -> np.ndarray:
    """``[n, 17]`` LLFF poses: columns [down, right, back] of a camera looking down -z, small
    offsets, h = w = 8, focal 10, bounds [1, 10]."""
    rot = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # LLFF axes of the OpenGL identity
    out = []
    for k in range(n):
        pose = np.concatenate([rot, [[0.1 * k], [0.0], [0.0]], [[8.0], [8.0], [10.0]]], 1)
        out.append(np.concatenate([pose.reshape(-1), [1.0, 10.0]]))
    return np.asarray(out)


def llff_dataset(root: Path, poses: np.ndarray | None = None, images: int = 3) -> Path:
    root.mkdir(parents=True)
    np.save(root / "poses_bounds.npy", llff_poses() if poses is None else poses)
    (root / "images").mkdir()
    for k in range(images):
        write_png(root / "images" / f"{k:03d}.png", _rgb(8, 8, k))
    return root


def save_with_header(directory: Path, edit) -> Path:
    """Rewrite ``directory``'s checkpoint as a valid safetensors file whose fieldcraft header
    went through ``edit(meta)`` (returns the new header dict, or a string written verbatim)."""
    from safetensors.torch import save_file

    tensors, meta = ckpt.load_checkpoint(directory)
    new = edit(meta)
    text = new if isinstance(new, str) else json.dumps(new if new is not None else meta)
    save_file(tensors, str(directory / ckpt.CHECKPOINT_NAME), metadata={ckpt.META_KEY: text})
    return directory


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Tiny finished runs to copy: ``image`` (fit image) and ``ct`` (fit ct)."""
    root = tmp_path_factory.mktemp("runs")
    image = root / "image"
    assert main(["fit", "image", "sample:camera", "--size", "16", "--steps", "2", "--out", str(image), "--quiet",
                 "--device", "cpu"]) == 0
    ct = root / "ct"
    assert main(["fit", "ct", "sample:shepp-logan", "--size", "16", "--views", "4", "--steps", "1",
                 "--sart-iterations", "1", "--out", str(ct), "--quiet", "--device", "cpu"]) == 0
    return {"image": image, "ct": ct}


class Ctx:
    """What a case gets: ``tmp`` (its directory), ``out`` (a copy of a finished image run, the
    ``--out`` of fits) and :meth:`run` (a fresh copy of a finished run of a task)."""

    def __init__(self, tmp: Path, runs: dict[str, Path]) -> None:
        self.tmp, self.runs = tmp, runs
        self.out = self.run("image", "out")

    def run(self, task: str, name: str | None = None) -> Path:
        dest = self.tmp / (name or f"{task}_run")
        shutil.copytree(self.runs[task], dest)
        return dest

    def fit(self, *args: str) -> list[str]:
        """argv of a fit into the finished run ``out`` (``--overwrite``: only a good input may replace it)."""
        return ["fit", *args, "--out", str(self.out), "--overwrite", "--steps", "1", "--quiet", "--device", "cpu"]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_refused(capsys, tmp: Path, argv: list[str], expect: tuple[str, ...]) -> str:
    """The shared checker: exit 2, one ``fieldcraft: error:`` line holding every ``expect``
    substring (case-insensitive), no traceback, every file under ``tmp`` byte-identical."""
    before = snapshot(tmp)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code}: {err}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("fieldcraft: error: "), lines[0]
    for s in expect:
        assert s.lower() in lines[0].lower(), f"{s!r} not in {lines[0]!r}"
    after = snapshot(tmp)
    damaged = sorted(k for k, h in before.items() if after.get(k) != h)
    assert not damaged, f"changed or removed: {damaged}"
    return lines[0]


# ----------------------------------------------------------------------------- the corpus

CASES = {}


def case(*expect: str, needs: str | None = None):
    """Register a case: the function writes its input and returns argv; ``expect``: substrings of
    the error line (the file's name and a word of the problem); ``needs``: the module under
    ``fieldcraft.commands`` that registers the command (the case is skipped without it)."""

    def register(fn):
        CASES[fn.__name__] = (fn, expect, needs)
        return fn

    return register


# --- images: fit image, fit image-gradients, fit blend


@case("bad.png", "empty")
def png_empty(c):
    (c.tmp / "bad.png").write_bytes(b"")
    return c.fit("image", str(c.tmp / "bad.png"))


@case("bad.png", "truncated")
def png_truncated(c):
    truncate(write_png(c.tmp / "bad.png", _rgb(64, 64)))
    return c.fit("image", str(c.tmp / "bad.png"))


@case("bad.png", "unreadable")
def png_corrupt(c):
    corrupt(write_png(c.tmp / "bad.png", _rgb(64, 64)), 60, 200)  # IDAT bytes: checksum mismatch
    return c.fit("image", str(c.tmp / "bad.png"))


@case("bad.png", "unreadable")
def png_not_an_image(c):
    (c.tmp / "bad.png").write_text("this is not a picture\n")
    return c.fit("image", str(c.tmp / "bad.png"))


@case("bad.jpg", "empty")
def jpeg_empty(c):
    (c.tmp / "bad.jpg").write_bytes(b"")
    return c.fit("image", str(c.tmp / "bad.jpg"))


@case("bad.jpg", "truncated")
def jpeg_truncated(c):
    truncate(write_pil(c.tmp / "bad.jpg", arr=_rgb(64, 64)), 0.3)
    return c.fit("image", str(c.tmp / "bad.jpg"))


@case("bad.jpg", "unreadable")
def jpeg_corrupt(c):
    corrupt(write_pil(c.tmp / "bad.jpg", arr=_rgb(64, 64)), 2, 300)  # the markers after SOI
    return c.fit("image", str(c.tmp / "bad.jpg"))


@case("bad.tif", "empty")
def tiff_empty(c):
    (c.tmp / "bad.tif").write_bytes(b"")
    return c.fit("image", str(c.tmp / "bad.tif"))


@case("bad.tif", "truncated")
def tiff_truncated(c):
    truncate(write_tiff(c.tmp / "bad.tif", _rgb(64, 64)), 0.5)
    return c.fit("image", str(c.tmp / "bad.tif"))


@case("bad.tif", "unreadable")
def tiff_corrupt(c):
    corrupt(write_tiff(c.tmp / "bad.tif", _rgb(64, 64)), 0, 8)  # byte order mark and first IFD offset
    return c.fit("image", str(c.tmp / "bad.tif"))


@case("bad.tif", "non-finite")
def tiff_float_nan(c):
    arr = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    arr[3, 4] = np.nan
    return c.fit("image", str(write_tiff(c.tmp / "bad.tif", arr)))


@case("bad.tif", "shape")
def tiff_stack(c):
    return c.fit("image", str(write_tiff(c.tmp / "bad.tif", np.zeros((5, 8, 8, 3), np.uint8))))


@case("bad.exr", "exr")
def exr(c):
    (c.tmp / "bad.exr").write_bytes(struct.pack("<I", 20000630) + b"\x02\x00\x00\x00" + b"\x00" * 64)
    return c.fit("image", str(c.tmp / "bad.exr"))


@case("bad.exr", "exr")
def exr_corrupt(c):
    (c.tmp / "bad.exr").write_bytes(b"garbage, not even the EXR magic number")
    return c.fit("image", str(c.tmp / "bad.exr"))


@case("bad.exr", "empty")
def exr_empty(c):
    (c.tmp / "bad.exr").write_bytes(b"")
    return c.fit("image", str(c.tmp / "bad.exr"))


@case("nothere.png", "no such file")
def image_missing(c):
    return c.fit("image", str(c.tmp / "nothere.png"))


@case("sample:nonesuch", "unknown")
def image_unknown_sample(c):
    return c.fit("image", "sample:nonesuch")


@case("mask.png", "truncated")
def mask_truncated(c):
    truncate(write_png(c.tmp / "mask.png", np.full((16, 16), 255, np.uint8)))
    return c.fit("image", "sample:camera", "--size", "16", "--mask", str(c.tmp / "mask.png"))


@case("mask.png", "mask is")
def mask_wrong_size(c):
    write_png(c.tmp / "mask.png", np.full((9, 9), 255, np.uint8))
    return c.fit("image", "sample:camera", "--size", "16", "--mask", str(c.tmp / "mask.png"))


@case("bad.jpg", "truncated")
def gradients_jpeg_truncated(c):
    truncate(write_pil(c.tmp / "bad.jpg", arr=_rgb(64, 64)), 0.3)
    return c.fit("image-gradients", str(c.tmp / "bad.jpg"))


@case("tall.png", "wide.png")
def blend_different_shapes(c):
    write_png(c.tmp / "tall.png", _rgb(20, 10))
    write_png(c.tmp / "wide.png", _rgb(10, 20))
    return c.fit("blend", str(c.tmp / "tall.png"), str(c.tmp / "wide.png"), "--size", "16")


@case("weights.tif", "truncated")
def blend_mask_truncated(c):
    write_png(c.tmp / "a.png", _rgb(16, 16, 1))
    write_png(c.tmp / "b.png", _rgb(16, 16, 2))
    truncate(write_tiff(c.tmp / "weights.tif", _rgb(64, 64)), 0.5)
    return c.fit("blend", str(c.tmp / "a.png"), str(c.tmp / "b.png"), "--size", "16", "--mask",
                 str(c.tmp / "weights.tif"))


# --- NeRF: Blender transforms_train.json


def _blender(c, edit=None):
    root = blender_dataset(c.tmp / "scene")
    if edit is not None:
        edit_json(root / "transforms_train.json", edit)
    return root


@case("transforms_train.json", "camera_angle_x")
def blender_missing_key(c):
    return c.fit("nerf", str(_blender(c, lambda m: m.pop("camera_angle_x"))))


@case("transforms_train.json", "frame 1", "transform_matrix")
def blender_frame_missing_matrix(c):
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][1].pop("transform_matrix"))))


@case("transforms_train.json", "camera_angle_x", "number")
def blender_angle_wrong_type(c):
    return c.fit("nerf", str(_blender(c, lambda m: m.update(camera_angle_x="wide"))))


@case("transforms_train.json", "camera_angle_x")
def blender_angle_nan(c):
    return c.fit("nerf", str(_blender(c, lambda m: m.update(camera_angle_x=float("nan")))))


@case("transforms_train.json", "frame 0", "file_path")
def blender_file_path_wrong_type(c):
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][0].update(file_path=7))))


@case("transforms_train.json", "frame 2", "numeric")
def blender_matrix_wrong_type(c):
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][2].update(transform_matrix="identity"))))


@case("transforms_train.json", "camera pose 1", "nan")
def blender_matrix_nan(c):
    def edit(m):
        m["frames"][1]["transform_matrix"][0][3] = float("nan")
    return c.fit("nerf", str(_blender(c, edit)))


@case("transforms_train.json", "camera pose 0", "singular")
def blender_matrix_singular(c):
    def edit(m):
        for r in range(3):
            m["frames"][0]["transform_matrix"][r][:3] = [0.0, 0.0, 0.0]
    return c.fit("nerf", str(_blender(c, edit)))


@case("transforms_train.json", "camera pose 2", "not orthonormal")
def blender_matrix_not_rigid(c):
    def edit(m):
        for r in range(3):
            m["frames"][2]["transform_matrix"][r][0] *= 1.5  # stretched x axis
    return c.fit("nerf", str(_blender(c, edit)))


@case("transforms_train.json", "camera pose 1", "reflection")
def blender_matrix_mirrored(c):
    def edit(m):
        for r in range(3):
            m["frames"][1]["transform_matrix"][r][0] *= -1.0
    return c.fit("nerf", str(_blender(c, edit)))


@case("transforms_train.json", "camera pose 0", "last row")
def blender_matrix_projective(c):
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][0]["transform_matrix"].__setitem__(3, [0, 0, 1, 0]))))


@case("transforms_train.json", "frame 2", "frame 0")
def blender_duplicate_frames(c):
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][2].update(file_path=m["frames"][0]["file_path"]))))


@case("transforms_train.json", "frame 1", "outside")
def blender_path_escapes(c):
    (c.tmp / "secret.png").write_bytes(encode_png(_rgb(100, 100)))
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][1].update(file_path="../secret"))))


@case("transforms_train.json", "frame 0", "outside")
def blender_path_absolute(c):
    write_png(c.tmp / "abs.png", _rgb(100, 100))
    return c.fit("nerf", str(_blender(c, lambda m: m["frames"][0].update(file_path=str(c.tmp / "abs.png")))))


@case("r_8.png", "differs")
def blender_mixed_sizes(c):
    root = _blender(c)
    write_png(root / "train" / "r_8.png", np.zeros((50, 50, 4), np.uint8))
    return c.fit("nerf", str(root))


@case("r_16.png", "truncated")
def blender_image_truncated(c):
    root = _blender(c)
    truncate(root / "train" / "r_16.png")
    return c.fit("nerf", str(root))


@case("transforms_train.json", "malformed json")
def blender_malformed_json(c):
    root = _blender(c)
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.69, "frames": [')
    return c.fit("nerf", str(root))


@case("transforms_train.json", "frames")
def blender_no_frames(c):
    return c.fit("nerf", str(_blender(c, lambda m: m.update(frames=[]))))


# --- NeRF: nerfstudio transforms.json


def _nerfstudio(c, edit=None):
    root = nerfstudio_dataset(c.tmp / "ns")
    if edit is not None:
        edit_json(root / "transforms.json", edit)
    return root


@case("transforms.json", "image size")
def nerfstudio_missing_size(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.pop("h"))))


@case("transforms.json", "'w'")
def nerfstudio_size_wrong_type(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.update(w="wide"))))


@case("transforms.json", "fl_x")
def nerfstudio_focal_negative(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.update(fl_x=-50.0))))


@case("transforms.json", "EQUIRECTANGULAR")
def nerfstudio_unsupported_camera_model(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.update(camera_model="EQUIRECTANGULAR"))))


@case("transforms.json", "k1")
def nerfstudio_distortion_not_a_number(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.update(k1="0.1x"))))


@case("transforms.json", "frame 1", "outside")
def nerfstudio_path_escapes(c):
    write_png(c.tmp / "secret.png", _rgb(100, 100))
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m["frames"][1].update(file_path="../secret.png"))))


@case("transforms.json", "frame 2", "frame 1")
def nerfstudio_duplicate_frames(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m["frames"][2].update(file_path=m["frames"][1]["file_path"]))))


@case("transforms.json", "camera pose 1", "not orthonormal")
def nerfstudio_matrix_not_rigid(c):
    def edit(m):
        m["frames"][1]["transform_matrix"][0][1] += 0.3  # sheared
    return c.fit("nerf", str(_nerfstudio(c, edit)))


@case("r_8.png", "transforms.json says")
def nerfstudio_size_mismatch(c):
    return c.fit("nerf", str(_nerfstudio(c, lambda m: m.update(w=50, h=50))))


# --- NeRF: LLFF poses_bounds.npy


@case("poses_bounds.npy", "[n, 17]")
def llff_wrong_shape(c):
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", llff_poses()[:, :15])))


@case("poses_bounds.npy", "[n, 17]")
def llff_one_dimensional(c):
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", llff_poses().reshape(-1))))


@case("poses_bounds.npy", "nan")
def llff_nan(c):
    poses = llff_poses()
    poses[1, 3] = np.nan
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", poses)))


@case("poses_bounds.npy", "bounds")
def llff_bounds_not_positive(c):
    poses = llff_poses()
    poses[:, 15] = 0.0
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", poses)))


@case("poses_bounds.npy", "numeric")
def llff_strings(c):
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", np.array([["a"] * 17] * 3))))


@case("poses_bounds.npy", "unreadable")
def llff_not_npy(c):
    root = llff_dataset(c.tmp / "llff")
    (root / "poses_bounds.npy").write_bytes(b"\x93NUMPY garbage")
    return c.fit("nerf", str(root))


@case("poses_bounds.npy", "view 0", "singular")
def llff_singular_rotation(c):
    poses = llff_poses()
    poses[0, [0, 1, 2, 5, 6, 7, 10, 11, 12]] = 0.0
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", poses)))


@case("images", "2 images", "3 poses")
def llff_image_count(c):
    return c.fit("nerf", str(llff_dataset(c.tmp / "llff", images=2)))


@case("nowhere", "not found")
def nerf_missing_dataset(c):
    return c.fit("nerf", str(c.tmp / "nowhere"))


# --- shapes: fit sdf / occupancy / autodecoder, eval mesh


@case("empty.obj", "empty")
def obj_empty_file(c):
    (c.tmp / "empty.obj").write_bytes(b"")
    return c.fit("sdf", str(c.tmp / "empty.obj"))


@case("comments.obj", "no triangle mesh")
def obj_no_geometry(c):
    (c.tmp / "comments.obj").write_text("# nothing here\n# at all\n")
    return c.fit("sdf", str(c.tmp / "comments.obj"))


@case("empty.ply", "empty")
def ply_no_vertices(c):
    (c.tmp / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                     "property float z\nelement face 0\nproperty list uchar int vertex_indices\n"
                                     "end_header\n")
    return c.fit("sdf", str(c.tmp / "empty.ply"))


@case("nan.obj", "nan")
def obj_nan_vertices(c):
    v, f = tetrahedron()
    v[2] = (0.0, float("nan"), 0.0)
    return c.fit("sdf", str(write_obj(c.tmp / "nan.obj", v, f)))


@case("index.obj", "index 8")
def obj_face_index_out_of_range(c):
    v, f = tetrahedron()
    (c.tmp / "index.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in v) + "f 1 2 9\nf 1 2 3\n")
    return c.fit("sdf", str(c.tmp / "index.obj"))


@case("points.ply", "without normals")
def point_cloud_without_normals(c):
    return c.fit("sdf", str(write_ply_points(c.tmp / "points.ply")))


@case("points.ply", "zero")
def point_cloud_zero_normals(c):
    return c.fit("sdf", str(write_ply_points(c.tmp / "points.ply", normals=np.zeros((50, 3)))))


@case("cut.ply", "unreadable")
def ply_truncated(c):
    write_ply_points(c.tmp / "cut.ply", 200, normals=np.tile([0.0, 0.0, 1.0], (200, 1)))
    truncate(c.tmp / "cut.ply", 0.5)
    return c.fit("sdf", str(c.tmp / "cut.ply"))


@case("bad.off", "unreadable")
def off_garbage(c):
    (c.tmp / "bad.off").write_text("OFF\n4 two 0\n0 0 0\n")
    return c.fit("sdf", str(c.tmp / "bad.off"))


@case("bad.stl", "mesh")
def stl_truncated(c):
    import trimesh

    trimesh.creation.box().export(c.tmp / "bad.stl")
    truncate(c.tmp / "bad.stl", 0.6)
    return c.fit("sdf", str(c.tmp / "bad.stl"))


@case("fan.obj", "non-manifold")
def obj_non_manifold(c):
    v = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)]
    return c.fit("sdf", str(write_obj(c.tmp / "fan.obj", v, [(0, 1, 2), (0, 1, 3), (0, 1, 4)])))


@case("shape.xyz", "unsupported")
def shape_unknown_suffix(c):
    (c.tmp / "shape.xyz").write_text("0 0 0\n")
    return c.fit("sdf", str(c.tmp / "shape.xyz"))


@case("points.ply", "needs a mesh")
def occupancy_point_cloud(c):
    return c.fit("occupancy", str(write_ply_points(c.tmp / "points.ply", normals=np.tile([0, 0, 1.0], (50, 1)))))


@case("nan.obj", "nan")
def autodecoder_second_shape_bad(c):
    v, f = tetrahedron()
    write_obj(c.tmp / "good.obj", v, f)
    v[1] = (float("inf"), 0.0, 0.0)
    write_obj(c.tmp / "nan.obj", v, f)
    return c.fit("autodecoder", str(c.tmp / "good.obj"), str(c.tmp / "nan.obj"))


@case("empty.obj", "empty")
def eval_mesh_empty_prediction(c):
    v, f = tetrahedron()
    write_obj(c.tmp / "gt.obj", v, f)
    (c.tmp / "empty.obj").write_bytes(b"")
    return ["eval", "mesh", str(c.tmp / "empty.obj"), str(c.tmp / "gt.obj"), "--points", "100"]


@case("gt.obj", "nan")
def eval_mesh_nan_ground_truth(c):
    v, f = tetrahedron()
    write_obj(c.tmp / "pred.obj", v, f)
    v[0] = (float("nan"),) * 3
    write_obj(c.tmp / "gt.obj", v, f)
    return ["eval", "mesh", str(c.tmp / "pred.obj"), str(c.tmp / "gt.obj"), "--points", "100"]


@case("points.ply", "point cloud")
def eval_mesh_point_cloud(c):
    v, f = tetrahedron()
    write_obj(c.tmp / "gt.obj", v, f)
    write_ply_points(c.tmp / "points.ply", normals=np.tile([0, 0, 1.0], (50, 1)))
    return ["eval", "mesh", str(c.tmp / "points.ply"), str(c.tmp / "gt.obj"), "--points", "100"]


# --- CT: APS data-exchange HDF5


@case("scan.h5", "/exchange/data_white")
def h5_missing_flats(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", omit=("/exchange/data_white",))), "--size", "8", "--views", "2")


@case("scan.h5", "/exchange/data", "3-d")
def h5_wrong_dimensions(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", data=np.ones((6, 16), np.float32))), "--size", "8")


@case("scan.h5", "data_white", "dark")
def h5_all_zero_flats(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", white=np.zeros((2, 2, 16), np.float32))), "--size", "8",
                 "--views", "2", "--centre", "7.5")


@case("scan.h5", "/exchange/data_dark", "frames of shape")
def h5_dark_shape_mismatch(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", dark=np.zeros((2, 3, 16), np.float32))), "--size", "8")


@case("scan.h5", "/exchange/theta", "angles")
def h5_theta_length(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", theta=np.arange(5.0))), "--size", "8")


@case("scan.h5", "/exchange/data", "nan")
def h5_nan(c):
    data = np.full((6, 2, 16), 500.0, np.float32)
    data[2, 1, 3] = np.nan
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", data=data)), "--size", "8")


@case("scan.h5", "/exchange/data", "numeric")
def h5_strings(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5", data=np.array([[[b"x"] * 16] * 2] * 6))), "--size", "8")


@case("scan.h5", "hdf5")
def h5_not_hdf5(c):
    (c.tmp / "scan.h5").write_text("not HDF5 at all\n")
    return c.fit("ct", str(c.tmp / "scan.h5"), "--size", "8")


@case("scan.h5", "hdf5")
def h5_truncated(c):
    truncate(write_h5(c.tmp / "scan.h5"), 0.5)
    return c.fit("ct", str(c.tmp / "scan.h5"), "--size", "8")


@case("scan.h5", "slice 5")
def h5_slice_out_of_range(c):
    return c.fit("ct", str(write_h5(c.tmp / "scan.h5")), "--size", "8", "--slice", "5")


# --- checkpoints: render / eval / export / --resume


def _truncated_run(c, task="image"):
    run = c.run(task)
    truncate(run / ckpt.CHECKPOINT_NAME, 0.5)
    return run


def _newer_run(c, task="image"):
    return save_with_header(c.run(task), lambda m: {**m, "format": ckpt.FORMAT_VERSION + 1})


@case("checkpoint.safetensors", "unreadable")
def render_image_truncated_checkpoint(c):
    return ["render", "image", str(_truncated_run(c)), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("image_run", "config")
def render_image_tampered_config_type(c):
    run = save_with_header(c.run("image"), lambda m: {**m, "field": {"type": "NoSuchThing"}})
    return ["render", "image", str(run), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("image_run", "checkpoint")
def render_image_tampered_width(c):
    def edit(m):
        m["field"]["network"]["hidden_width"] = 7  # the stored weights no longer fit
        return m
    run = save_with_header(c.run("image"), edit)
    return ["render", "image", str(run), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("image_run", "height")
def render_image_tampered_size(c):
    def edit(m):
        m["image"]["height"] = "tall"
        return m
    run = save_with_header(c.run("image"), edit)
    return ["render", "image", str(run), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("checkpoint.safetensors", "metadata")
def render_image_header_not_json(c):
    run = save_with_header(c.run("image"), lambda m: '{"task": "image", ')
    return ["render", "image", str(run), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("ct_run", "'ct'", "image")
def render_image_other_task(c):
    return ["render", "image", str(c.run("ct")), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("checkpoint.safetensors", "newer")
def render_image_newer_format(c):
    return ["render", "image", str(_newer_run(c)), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("nocheckpoint", "no checkpoint")
def render_image_no_checkpoint(c):
    (c.tmp / "nocheckpoint").mkdir()
    return ["render", "image", str(c.tmp / "nocheckpoint"), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("image_run", "'image'", "ct")
def render_ct_other_task(c):
    return ["render", "ct", str(c.run("image")), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("checkpoint.safetensors", "unreadable")
def render_ct_truncated_checkpoint(c):
    return ["render", "ct", str(_truncated_run(c, "ct")), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("ct_run", "value_scale")
def render_ct_tampered_header(c):
    run = save_with_header(c.run("ct"), lambda m: {k: v for k, v in m.items() if k != "value_scale"})
    return ["render", "ct", str(run), "--out", str(c.tmp / "x.png"), "--device", "cpu"]


@case("checkpoint.safetensors", "unreadable")
def eval_nerf_truncated_checkpoint(c):
    return ["eval", "nerf", str(_truncated_run(c)), "--quiet", "--device", "cpu"]


@case("image_run", "'image'", "nerf")
def eval_nerf_other_task(c):
    return ["eval", "nerf", str(c.run("image")), "--quiet", "--device", "cpu"]


@case("checkpoint.safetensors", "newer")
def render_nerf_newer_format(c):
    return ["render", "nerf", str(_newer_run(c)), "--orbit", "--out", str(c.tmp / "v.gif"), "--quiet", "--device", "cpu"]


@case("checkpoint.safetensors", "unreadable")
def export_mesh_truncated_checkpoint(c):
    return ["export", "mesh", str(_truncated_run(c)), "--out", str(c.tmp / "m.ply"), "--resolution", "16"]


@case("ct_run", "not a shape checkpoint")
def export_mesh_other_task(c):
    return ["export", "mesh", str(c.run("ct")), "--out", str(c.tmp / "m.ply"), "--resolution", "16"]


@case("image_run", "not a shape checkpoint")
def render_sdf_other_task(c):
    return ["render", "sdf", str(c.run("image")), "--out", str(c.tmp / "views"), "--size", "8", "--device", "cpu"]


@case("checkpoint.safetensors", "unreadable")
def resume_truncated_checkpoint(c):
    truncate(c.out / ckpt.CHECKPOINT_NAME, 0.5)
    return ["fit", "image", "sample:camera", "--out", str(c.out), "--resume", "--steps", "3", "--quiet"]


@case("out", "'ct'", "image")
def resume_other_task(c):
    shutil.rmtree(c.out)
    shutil.copytree(c.runs["ct"], c.out)
    return ["fit", "image", "sample:camera", "--out", str(c.out), "--resume", "--steps", "3", "--quiet"]


@case("checkpoint.safetensors", "newer")
def resume_newer_format(c):
    save_with_header(c.out, lambda m: {**m, "format": ckpt.FORMAT_VERSION + 1})
    return ["fit", "image", "sample:camera", "--out", str(c.out), "--resume", "--steps", "3", "--quiet"]


@case("out", "step")
def resume_tampered_step(c):
    save_with_header(c.out, lambda m: {**m, "step": "many"})
    return ["fit", "image", "sample:camera", "--out", str(c.out), "--resume", "--steps", "3", "--quiet"]


@case("out", "config")
def resume_tampered_config(c):
    save_with_header(c.out, lambda m: {**m, "config": {"type": "ImageFit", "no_such_field": 1}})
    return ["fit", "image", "sample:camera", "--out", str(c.out), "--resume", "--steps", "3", "--quiet"]


@case("empty_out", "--resume needs a checkpoint")
def resume_without_checkpoint(c):
    (c.tmp / "empty_out").mkdir()
    return ["fit", "image", "sample:camera", "--out", str(c.tmp / "empty_out"), "--resume", "--quiet"]


@case("empty_out", "--resume needs a checkpoint")
def resume_sdf_without_checkpoint(c):
    (c.tmp / "empty_out").mkdir()
    v, f = tetrahedron()
    return ["fit", "sdf", str(write_obj(c.tmp / "t.obj", v, f)), "--out", str(c.tmp / "empty_out"), "--resume"]


# --- image datasets: fit images, fit functa, encode functa, fit classifier


@case("b.png", "unreadable", needs="images")
def images_folder_truncated_file(c):
    (c.tmp / "set").mkdir()
    write_png(c.tmp / "set" / "a.png", _rgb(64, 64, 1))
    truncate(write_png(c.tmp / "set" / "b.png", _rgb(64, 64, 2)))
    return c.fit("images", str(c.tmp / "set"))


@case("wrong.npy", "[n, h, w]", needs="images")
def images_npy_wrong_shape(c):
    np.save(c.tmp / "wrong.npy", np.zeros((3, 4), np.uint8))
    return c.fit("images", str(c.tmp / "wrong.npy"))


@case("x-images-idx3-ubyte", "header", needs="images")
def images_idx_truncated(c):
    from fieldcraft.datasets import write_idx

    write_idx(c.tmp / "x-images-idx3-ubyte", np.zeros((4, 8, 8), np.uint8))
    truncate(c.tmp / "x-images-idx3-ubyte", 0.5)
    return c.fit("images", str(c.tmp / "x-images-idx3-ubyte"))


@case("b.png", "size", needs="functa")
def functa_mixed_sizes(c):
    (c.tmp / "set").mkdir()
    write_png(c.tmp / "set" / "a.png", _rgb(8, 8, 1))
    write_png(c.tmp / "set" / "b.png", _rgb(9, 8, 2))
    return c.fit("functa", str(c.tmp / "set"), "--prior-steps", "0")


@case("image_run", "'image'", "functa", needs="functa")
def encode_functa_other_task(c):
    np.save(c.tmp / "set.npy", np.zeros((2, 8, 8), np.uint8))
    return ["encode", "functa", str(c.run("image")), str(c.tmp / "set.npy"), "--out", str(c.tmp / "enc"), "--device",
            "cpu"]


@case("latents.safetensors", "latents", needs="functa")
def classifier_latents_truncated(c):
    from safetensors.numpy import save_file

    save_file({"latents": np.zeros((4, 8), np.float32)}, str(c.tmp / "latents.safetensors"))
    truncate(c.tmp / "latents.safetensors", 0.5)
    return c.fit("classifier", str(c.tmp / "latents.safetensors"))


# --- output paths


@case("afile", "is a file")
def out_is_a_file(c):
    (c.tmp / "afile").write_text("keep me\n")
    return ["fit", "image", "sample:camera", "--size", "16", "--steps", "1", "--out", str(c.tmp / "afile"), "--quiet"]


@case("afile", "cannot write")
def out_under_a_file(c):
    (c.tmp / "afile").write_text("keep me\n")
    return ["fit", "image", "sample:camera", "--size", "16", "--steps", "1", "--out", str(c.tmp / "afile" / "run"),
            "--quiet"]


@case("out", "already holds")
def out_holds_a_run(c):
    return ["fit", "image", "sample:camera", "--size", "16", "--steps", "1", "--out", str(c.out), "--quiet"]


@case("adir", "directory")
def render_out_is_a_directory(c):
    (c.tmp / "adir").mkdir()
    (c.tmp / "adir" / "keep.txt").write_text("keep me\n")
    return ["render", "image", str(c.run("image")), "--out", str(c.tmp / "adir"), "--device", "cpu"]


@case("afile", "not a directory")
def render_out_under_a_file(c):
    (c.tmp / "afile").write_text("keep me\n")
    return ["render", "ct", str(c.run("ct")), "--out", str(c.tmp / "afile" / "x.png"), "--device", "cpu"]


@case("m.xyz", ".ply or .obj")
def export_mesh_bad_suffix(c):
    return ["export", "mesh", str(c.run("image")), "--out", str(c.tmp / "m.xyz"), "--resolution", "16"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_in_one_line(name, tmp_path, capsys, finished_runs):
    fn, expect, needs = CASES[name]
    if needs is not None:
        pytest.importorskip(f"fieldcraft.commands.{needs}", reason=f"no '{needs}' commands in this build")
    argv = fn(Ctx(tmp_path, finished_runs))
    check_refused(capsys, tmp_path, argv, expect)


def test_corpus_size():
    assert len(CASES) >= 40


@pytest.mark.skipif(IS_ROOT, reason="root writes through a read-only mode (0o500); out_under_a_file covers it")
def test_out_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        check_refused(capsys, tmp_path, ["fit", "image", "sample:camera", "--size", "16", "--steps", "1", "--out",
                                         str(locked / "run"), "--quiet"], ("locked", "cannot write"))
    finally:
        locked.chmod(0o700)


def _no_space(tensors, path, *args, **kwargs):
    """A stand-in for safetensors' writer on a full disk: half a file, then ENOSPC."""
    with open(path, "wb") as f:
        f.write(b"\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_a_checkpoint_write(tmp_path, capsys, finished_runs, monkeypatch):
    """The disk fills while a resumed fit writes its checkpoint: one line naming the checkpoint and
    the lack of space, exit 2, and the previous checkpoint intact (and still resumable)."""
    import safetensors.torch

    out = Ctx(tmp_path, finished_runs).out
    old = (out / ckpt.CHECKPOINT_NAME).read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _no_space)
    before = snapshot(tmp_path)
    code = main(["fit", "image", "sample:camera", "--out", str(out), "--resume", "--steps", "4", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("fieldcraft: error: ") and ckpt.CHECKPOINT_NAME in err[0] and "no space" in err[0].lower()
    assert (out / ckpt.CHECKPOINT_NAME).read_bytes() == old
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    after = snapshot(tmp_path)
    # history.jsonl may hold the steps past the checkpoint (dropped on resume); nothing else changed
    assert {k: v for k, v in before.items() if k != "out/history.jsonl"} == \
        {k: v for k, v in after.items() if k in before and k != "out/history.jsonl"}
    monkeypatch.undo()
    assert main(["fit", "image", "sample:camera", "--out", str(out), "--resume", "--steps", "4", "--quiet"]) == 0
    assert ckpt.load_checkpoint(out)[1]["step"] == 4


def test_disk_full_writing_an_output(tmp_path, capsys, finished_runs, monkeypatch):
    """``render image`` on a full disk: one line naming the PNG, nothing left behind."""
    import fieldcraft.io.checkpoint as mod

    run = Ctx(tmp_path, finished_runs).run("image")
    real = mod.atomic_write

    def full(path, write):
        return real(path, lambda tmp: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))

    monkeypatch.setattr(mod, "atomic_write", full)
    check_refused(capsys, tmp_path, ["render", "image", str(run), "--out", str(tmp_path / "big.png"), "--device", "cpu"],
                  ("big.png", "no space"))
    assert not (tmp_path / "big.png").exists()


def test_subprocess_reports_one_line(tmp_path):
    """The installed entry point, not only main(): a truncated PNG and a bad transforms.json end
    in exit 2 and one stderr line (no warnings or progress bars around it)."""
    truncate(write_png(tmp_path / "bad.png", _rgb(64, 64)))
    scene = blender_dataset(tmp_path / "scene")
    edit_json(scene / "transforms_train.json", lambda m: m["frames"][1].update(file_path="../../etc/passwd"))
    for argv in (["fit", "image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "o1"), "--steps", "1"],
                 ["fit", "nerf", str(scene), "--out", str(tmp_path / "o2"), "--steps", "1"]):
        r = subprocess.run([sys.executable, "-m", "fieldcraft", *argv], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("fieldcraft: error: ")


# ----------------------------------------------------------------------------- valid inputs that look odd


def test_good_fixtures_load(tmp_path):
    """The corpus's datasets are valid before they are broken (each case tests its one defect)."""
    from fieldcraft.data.ct import read_data_exchange
    from fieldcraft.data.scene import load_posed_images
    from fieldcraft.geometry.mesh import load_shape

    assert len(load_posed_images(blender_dataset(tmp_path / "b"))) == 3
    assert len(load_posed_images(nerfstudio_dataset(tmp_path / "n"), "train")) == 2
    assert len(load_posed_images(llff_dataset(tmp_path / "l"), "train")) == 2
    assert read_data_exchange(str(write_h5(tmp_path / "s.h5"))).data.shape == (6, 2, 16)
    v, f = tetrahedron()
    assert load_shape(write_obj(tmp_path / "t.obj", v, f)).is_mesh
    assert load_shape(write_ply_points(tmp_path / "p.ply", normals=np.tile([0, 0, 1.0], (50, 1)))).normals is not None


def _odd_images(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the expected [H, W, C] floats)."""
    import png
    from PIL import Image

    rgb = _rgb(8, 10)
    out = {}
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp / "palette.png")
    out["palette_png"] = (tmp / "palette.png", np.asarray(pal.convert("RGB"), np.float32) / 255)
    pal.save(tmp / "palette.tif")
    out["palette_tiff"] = (tmp / "palette.tif", np.asarray(pal.convert("RGB"), np.float32) / 255)
    pal.save(tmp / "palette.gif")
    out["palette_gif"] = (tmp / "palette.gif", np.asarray(pal.convert("RGB"), np.float32) / 255)
    pal_t = pal.copy()
    pal_t.info["transparency"] = int(np.asarray(pal)[0, 0])
    pal_t.save(tmp / "palette_alpha.png", transparency=int(np.asarray(pal)[0, 0]))
    out["palette_alpha_png"] = (tmp / "palette_alpha.png", np.asarray(pal_t.convert("RGBA"), np.float32) / 255)
    bits = rgb[..., 0] > 127
    for ext in ("png", "tif", "bmp"):
        Image.fromarray(bits).convert("1").save(tmp / f"one_bit.{ext}")
        out[f"one_bit_{ext}"] = (tmp / f"one_bit.{ext}", bits[..., None].astype(np.float32))
    four = (np.arange(80).reshape(8, 10) % 16).astype(np.uint8)
    png.Writer(10, 8, greyscale=True, bitdepth=4).write_array(open(tmp / "four_bit.png", "wb"), four.reshape(-1))
    out["four_bit_png"] = (tmp / "four_bit.png", four[..., None].astype(np.float32) / 15)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp / "cmyk.jpg", quality=100)
    out["cmyk_jpeg"] = (tmp / "cmyk.jpg", np.asarray(Image.open(tmp / "cmyk.jpg").convert("RGB"), np.float32) / 255)
    cmyk.save(tmp / "cmyk.tif")
    out["cmyk_tiff"] = (tmp / "cmyk.tif", np.asarray(cmyk.convert("RGB"), np.float32) / 255)
    ga = np.stack([np.arange(80).reshape(8, 10) * 800, np.arange(80).reshape(8, 10)[::-1] * 700], -1).astype(np.uint16)
    png.Writer(10, 8, greyscale=True, alpha=True, bitdepth=16).write_array(open(tmp / "ga16.png", "wb"), ga.reshape(-1))
    expect = ga.astype(np.float32) / 65535
    expect_rgba = np.concatenate([expect[..., :1]] * 3 + [expect[..., 1:]], -1)
    out["gray_alpha_16_png"] = (tmp / "ga16.png", expect_rgba)
    write_tiff(tmp / "ga16.tif", ga, photometric="minisblack", extrasamples=["unassalpha"])
    out["gray_alpha_16_tiff"] = (tmp / "ga16.tif", expect_rgba)
    write_tiff(tmp / "miniswhite.tif", rgb[..., 0], photometric="miniswhite")
    out["miniswhite_tiff"] = (tmp / "miniswhite.tif", (255 - rgb[..., :1]).astype(np.float32) / 255)
    return out


ODD = ("palette_png", "palette_tiff", "palette_gif", "palette_alpha_png", "one_bit_png", "one_bit_tif", "one_bit_bmp",
       "four_bit_png", "cmyk_jpeg", "cmyk_tiff", "gray_alpha_16_png", "gray_alpha_16_tiff", "miniswhite_tiff")


@pytest.mark.parametrize("name", ODD)
def test_unusual_valid_images_are_read_correctly(name, tmp_path):
    from fieldcraft.data.images import load_image

    path, expected = _odd_images(tmp_path)[name]
    got = load_image(path).pixels
    assert got.shape == expected.shape, (got.shape, expected.shape)
    tol = 2.5 / 255 if name == "cmyk_jpeg" else 1e-6
    assert np.abs(got - expected).max() <= tol


def test_unusual_image_fits_from_the_command_line(tmp_path, capsys):
    """A palette PNG with transparency runs through ``fit image`` (4 channels)."""
    path = _odd_images(tmp_path)["palette_alpha_png"][0]
    assert main(["fit", "image", str(path), "--steps", "1", "--out", str(tmp_path / "o"), "--quiet", "--device",
                 "cpu"]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["image"]["channels"] == 4
