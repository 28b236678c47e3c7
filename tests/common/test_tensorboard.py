"""The numpy TensorBoard writer, read back with tensorboard's EventAccumulator."""
import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from efficient_vdvae_common.tensorboard import TensorBoardWriter


def _load(logdir):
    accumulator = EventAccumulator(str(logdir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_histograms_images_read_back(tmp_path):
    values = np.random.RandomState(1).normal(size=1000)
    image = np.random.RandomState(2).randint(0, 256, size=(6, 8, 3)).astype(np.uint8)
    with TensorBoardWriter(tmp_path / "train") as writer:
        writer.add_scalar("Losses/nelbo", 3.25, step=7)
        writer.add_scalars({"a": 1.0, "b": 2.0}, step=8, prefix="Stats/")
        writer.add_histogram("Weights/w", values, step=7, bins=20)
        writer.add_histogram("Weights/all_nan", np.full(3, np.nan), step=7)
        writer.add_image("Images/targets", image, step=7)

    acc = _load(tmp_path / "train")
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"Losses/nelbo", "Stats/a", "Stats/b"}
    assert [(e.step, e.value) for e in acc.Scalars("Losses/nelbo")] == [(7, 3.25)]
    assert acc.Scalars("Stats/b")[0].value == 2.0

    assert tags["histograms"] == ["Weights/w"]  # the all-NaN one is skipped
    histo = acc.Histograms("Weights/w")[0].histogram_value
    counts, edges = np.histogram(values, bins=20)
    assert histo.num == 1000
    np.testing.assert_allclose(histo.bucket, counts)
    np.testing.assert_allclose(histo.bucket_limit, edges[1:])
    np.testing.assert_allclose([histo.min, histo.max, histo.sum, histo.sum_squares],
                               [values.min(), values.max(), values.sum(), (values ** 2).sum()])

    stored = acc.Images("Images/targets")[0]
    assert (stored.step, stored.height, stored.width) == (7, 6, 8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored.encoded_image_string))), image)


def test_grayscale_image(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_image("gray", image, step=0)
    stored = _load(tmp_path).Images("gray")[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored.encoded_image_string))), image[:, :, 0])


def test_writing_does_not_import_tensorflow(tmp_path):
    """TensorFlow is installed (for tfds); importing it would cost seconds in every training process."""
    import subprocess
    import sys

    code = ("import sys; from efficient_vdvae_common.tensorboard import TensorBoardWriter; "
            f"w = TensorBoardWriter({str(tmp_path)!r}); w.add_scalar('a', 1.0, 0); w.close(); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_two_writers_in_one_directory(tmp_path):
    with TensorBoardWriter(tmp_path) as first, TensorBoardWriter(tmp_path) as second:
        first.add_scalar("x", 1.0, step=1)
        second.add_scalar("x", 2.0, step=2)
    assert len(list(tmp_path.iterdir())) == 2
    assert [(e.step, e.value) for e in _load(tmp_path).Scalars("x")] == [(1, 1.0), (2, 2.0)]
