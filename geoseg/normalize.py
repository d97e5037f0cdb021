"""Per-patch normalisation, the same arithmetic in training, inference and the ONNX graph.

With ``data.normalization: patch`` every patch the model sees, in training and in inference, is
normalised by its own per-band mean and standard deviation instead of the training data's. A
town whose imagery is brighter, hazier or differently white-balanced then reaches the model in
the range it learnt on: the normalisation travels with the image. The training data's standard
deviation only sets a floor (:data:`STD_FLOOR` of it is added to each patch's), so that a
uniform patch (a roof, water) is not stretched into noise.
"""

from __future__ import annotations

from typing import Any

#: ``data.normalization`` values that use the training data's statistics.
DATASET_METHODS = ("meanstd", "percentile")
#: Fraction of the training data's per-band std added to each patch's std.
STD_FLOOR = 0.1


def patch_statistics(x: Any, dataset_std: Any, valid: Any = None) -> tuple[Any, Any]:
    """Per-patch, per-band (mean, std) of ``x``, to normalise it as ``(x - mean) / std``.

    Args:
        x: float tensor [B, C, H, W] (pixel values in the rasters' units).
        dataset_std: tensor [C], the training data's per-band std (sets the floor).
        valid: optional bool tensor [B, H, W]; only True pixels count (image nodata excluded).

    Returns:
        (mean, std), tensors [B, C, 1, 1]; std >= ``STD_FLOOR * dataset_std`` > 0.
    """
    if valid is None:
        mean = x.mean((2, 3), keepdim=True)
        var = (x - mean).square().mean((2, 3), keepdim=True)
    else:
        w = valid[:, None].to(x.dtype)
        n = w.sum((2, 3), keepdim=True).clamp_min(1.0)
        mean = (x * w).sum((2, 3), keepdim=True) / n
        var = ((x - mean).square() * w).sum((2, 3), keepdim=True) / n
    return mean, var.sqrt() + STD_FLOOR * dataset_std.reshape(1, -1, 1, 1).to(x.dtype)
