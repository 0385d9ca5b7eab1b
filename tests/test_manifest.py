"""The manifest round trip: string columns stay strings, empty numeric cells come back as NaN numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from illustra.data.manifest import load_manifest, save_manifest


def test_manifest_round_trip_keeps_strings_and_numeric_nan(tmp_path):
    frame = pd.DataFrame({"path": ["L2_2/a.png", "L2_2/NA"], "reason": ["", "corrupt: truncated"],
                          "cache_row": [0, -1], "patch_logit": [1.5, np.nan]})
    save_manifest(frame, tmp_path / "manifest.csv")
    loaded = load_manifest(tmp_path / "manifest.csv")
    assert loaded["path"].tolist() == ["L2_2/a.png", "L2_2/NA"]  # a file named NA is not a missing value
    assert loaded["reason"].tolist() == ["", "corrupt: truncated"]
    assert loaded["patch_logit"].dtype == float and np.isnan(loaded["patch_logit"].iloc[1])
    assert loaded["patch_logit"].iloc[0] == 1.5
