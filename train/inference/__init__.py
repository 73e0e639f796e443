"""Using a trained model: the Python API, the shared forward pass, image reading and drawing.

    from train.inference import PoseEstimator
    estimator = PoseEstimator.from_checkpoint("runs/default")           # best checkpoint by PCKh
    [pred] = estimator.predict([image])                                 # image: uint8 [H, W, 3] RGB

* `estimator`: `PoseEstimator`, person boxes and their checks (exported here);
* `forward`: images → coordinates and heatmaps, plainly or with the flip test (validation uses it too);
* `images`: reading image files as RGB arrays; `visualize`: skeletons, heatmaps and curves.
"""

from train.inference.estimator import (
    MAX_BOX_SIDE_FRACTION,
    MAX_CENTRE_DISTANCE,
    MIN_BOX_OVERLAP,
    MIN_BOX_SIDE_FRACTION,
    Box,
    BoxOutsideImageWarning,
    PoseEstimator,
    Prediction,
    box_overlap,
    check_box,
    load,
    scale_range,
)

__all__ = [
    "MAX_BOX_SIDE_FRACTION",
    "MAX_CENTRE_DISTANCE",
    "MIN_BOX_OVERLAP",
    "MIN_BOX_SIDE_FRACTION",
    "Box",
    "BoxOutsideImageWarning",
    "PoseEstimator",
    "Prediction",
    "box_overlap",
    "check_box",
    "load",
    "scale_range",
]
