"""The encodings file format (efficient_vdvae_common.encodings): loads without pickle."""
import pickle

import numpy as np
import pytest

from efficient_vdvae_common.encodings import (Encodings, EncodingsBuilder, EncodingsError, GroupEncoding,
                                              read_encodings, write_encodings)


def _posterior(rng, n, size, active):
    mean = rng.normal(size=(n, size, size, active))
    std = rng.random((n, size, size, active)) + 0.1
    return np.stack([mean, std], axis=-1).astype(np.float32)


def test_round_trip_in_batches(tmp_path):
    rng = np.random.default_rng(0)
    names = ["a/x.png", "b.png", "c.jpg", "d.png", "e.png"]
    group_2, group_5 = _posterior(rng, 5, 2, 1), _posterior(rng, 5, 8, 3)
    builder = EncodingsBuilder({5: [0, 2, 3], 2: [1]})
    builder.add_batch(names[:3], {2: group_2[:3], 5: group_5[:3]})
    builder.add_batch(names[3:], {2: group_2[3:], 5: group_5[3:]})
    path = tmp_path / "latents" / "encodings.npz"
    write_encodings(path, builder.build())
    assert [p.name for p in path.parent.iterdir()] == ["encodings.npz"]  # no temp file left behind

    # The documented layout, read with numpy alone and no pickle.
    with np.load(path, allow_pickle=False) as raw:
        assert sorted(raw.files) == ["file_names", "format_version", "group_2_posterior", "group_2_variates",
                                     "group_5_posterior", "group_5_variates", "groups"]
        assert raw["file_names"].tolist() == names
        assert raw["groups"].tolist() == [2, 5]
        assert raw["group_5_variates"].tolist() == [0, 2, 3]
        assert raw["group_5_posterior"].shape == (5, 8, 8, 3, 2)
        np.testing.assert_array_equal(raw["group_2_posterior"], group_2)

    encodings = read_encodings(path)
    assert encodings.file_names == names
    assert sorted(encodings.groups) == [2, 5]
    np.testing.assert_array_equal(encodings.groups[5].posterior, group_5)
    np.testing.assert_array_equal(encodings.groups[2].variates, [1])
    one = encodings.for_image("d.png")
    np.testing.assert_array_equal(one[5], group_5[3])
    with pytest.raises(KeyError, match="zzz"):
        encodings.for_image("zzz")


def test_layout_is_checked():
    good = np.zeros((2, 4, 4, 2, 2), dtype=np.float32)
    wrong_shape = r"group 3: posterior of shape \(2, 4, 4, 2, 2\), expected \(2, H, W, 3, 2\)"
    with pytest.raises(EncodingsError, match=wrong_shape):
        Encodings(["a", "b"], {3: GroupEncoding(np.array([0, 1, 2]), good)})
    with pytest.raises(EncodingsError, match="not unique"):
        Encodings(["a", "a"], {3: GroupEncoding(np.array([0, 1]), good)})
    with pytest.raises(EncodingsError, match="ascending"):
        Encodings(["a", "b"], {3: GroupEncoding(np.array([1, 0]), good)})
    builder = EncodingsBuilder({0: [0]})
    with pytest.raises(EncodingsError, match=r"groups \[1\], expected \[0\]"):
        builder.add_batch(["a"], {1: np.zeros((1, 2, 2, 1, 2))})
    with pytest.raises(EncodingsError, match="no images"):
        builder.build()


def test_bad_files_name_the_file(tmp_path):
    path = tmp_path / "encodings.npz"
    with pytest.raises(EncodingsError, match=f"no encodings file at {path}"):
        read_encodings(path)
    # The original's format (a pickle) is refused rather than unpickled.
    path.write_bytes(pickle.dumps({"latent_codes": {}}))
    with pytest.raises(EncodingsError, match=f"cannot read encodings file {path}"):
        read_encodings(path)
    np.savez(path, file_names=np.array(["a"]), groups=np.array([0]), format_version=np.array(1))
    with pytest.raises(EncodingsError, match=f"{path} lacks the array 'group_0_variates'"):
        read_encodings(path)
    np.savez(path, file_names=np.array(["a"]), groups=np.array([], dtype=np.int64), format_version=np.array(9))
    with pytest.raises(EncodingsError, match="format_version 9"):
        read_encodings(path)
