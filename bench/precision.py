"""Speed of the activation extraction and of trials in each precision, and of op determinism.

    python bench/precision.py [--backbones mobilenet_025,resnet50] [--size 224] [--images 128]

Per backbone and precision (float32, mixed_bfloat16): the frozen backbone's forward pass
as the activation cache runs it (images/s, batch 32), and one trial's training above the
freeze boundary at unfreeze depth 0 (the head on pooled features) and 1 (the top block
and the head), on activations of the cached shape (samples/s, second epoch, batch 32);
then the float32 depth-1 trial with TensorFlow's op determinism on. Random weights and
inputs: the arithmetic, not the values, sets the speed. Prints the CPU's bfloat16 units.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from cxr_tuner.hypermodels import precision
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.compat import tf_compat
from cxr_tuner.hypermodels.cutting import ActivationClassifier, cut_layer, frozen_image_model, frozen_model
from cxr_tuner.hypermodels.registry import get_backbone

BATCH = 32
POLICIES = ("float32", "mixed_bfloat16")


def extraction_rate(classifier: XrayClassifier, backbone: str, images: np.ndarray) -> float:
    model = frozen_image_model(classifier, backbone)
    spec = get_backbone(backbone)
    segment = frozen_model(model, None, [cut_layer(spec, d) for d in range(len(spec.unfreeze_points) + 1)])
    segment.predict_on_batch(images[:BATCH])  # traces
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        segment.predict_on_batch(images[i:i + BATCH])
    return len(images) / (time.perf_counter() - start)


def trial_rate(classifier: XrayClassifier, backbone: str, depth: int, count: int) -> float:
    keras.utils.set_random_seed(0)  # as every trial does; op determinism refuses unseeded random ops
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=backbone, unfreeze_depth=depth, head_depth=1, head_units_0=128, dropout=0.2)
    model = ActivationClassifier(classifier, datasets=None).build(hp)
    x = np.random.default_rng(0).standard_normal((count, *model.input.shape[1:])).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(count) % 3]
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # traces
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    print(f"CPU bfloat16 units: {', '.join(precision.cpu_bfloat16_units()) or 'none reported'}; "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; TensorFlow {tf.__version__}")
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 1), dtype="uint8")
    for backbone in args.backbones.split(","):
        for policy in POLICIES:
            classifier = XrayClassifier(3, args.size, (backbone,), _random_weights_file(backbone, args.size), policy)
            rates = [f"extraction {extraction_rate(classifier, backbone, images):7.1f} img/s"]
            rates += [f"trial depth {d} {trial_rate(classifier, backbone, d, 4 * args.images):7.1f} samples/s"
                      for d in (0, 1)]
            print(f"{backbone:<14} {policy:<15} " + ", ".join(rates), flush=True)
        classifier = XrayClassifier(3, args.size, (backbone,), _random_weights_file(backbone, args.size))
        tf.config.experimental.enable_op_determinism()
        rate = trial_rate(classifier, backbone, 1, 4 * args.images)
        tf_compat.disable_op_determinism()
        print(f"{backbone:<14} {'float32':<15} trial depth 1 with op determinism {rate:7.1f} samples/s", flush=True)


_FILES = {}


def _random_weights_file(backbone: str, size: int) -> str:
    """A weights file of random values, so the backbone counts as pretrained (a frozen part to extract)."""
    if (backbone, size) not in _FILES:
        path = Path("/tmp") / f"bench-precision-{backbone}-{size}.weights.h5"
        if not path.is_file():
            get_backbone(backbone).constructor(include_top=False, weights=None,
                                               input_shape=(size, size, 3)).save_weights(path)
        _FILES[backbone, size] = str(path)
    return _FILES[backbone, size]


if __name__ == "__main__":
    main()
