"""The `train` settings a test hands the runner: the schema's defaults but for the keys it gives."""

from __future__ import annotations

import json

from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.train.settings import TrainSettings


def train_settings(**keys) -> TrainSettings:
    """Rule train's settings with these keys of the `train` section (the others at their schema defaults)."""
    return parse_settings(TrainSettings, json.dumps(keys))
