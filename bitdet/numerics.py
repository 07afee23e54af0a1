"""BiT's numerical conventions, pinned in one place.

Every module that needs one of these imports it from here, and ``tests/models/test_resnetv2.py``
locks them, so a change is a deliberate, visible decision.
"""

# Weight Standardization epsilon. The official BiT code uses 1e-10 (timm uses 1e-8); the
# released checkpoints were trained with 1e-10, so that is what reproduces their logits.
WS_EPS: float = 1e-10

# GroupNorm: 32 groups, epsilon 1e-5 (TensorFlow's and PyTorch's default for group norm).
GN_GROUPS: int = 32
GN_EPS: float = 1e-5

# Input scaling: RGB in [0, 255] -> [-1, 1] via (x - 127.5) / 127.5, i.e. x / 127.5 - 1.
# In Detectron2 terms: PIXEL_MEAN = PIXEL_STD = [127.5] * 3, INPUT.FORMAT = "RGB".
PIXEL_MEAN: float = 127.5
PIXEL_STD: float = 127.5

# Stem: the 7x7/2 conv output is zero-padded by 1 and then max-pooled 3x3/2 with padding 0.
# This is NOT MaxPool2d(padding=1): max-pool padding pads with -inf, and since the stem
# output is not activated (it can be negative), the zero border can win the max.
STEM_POOL_PAD: int = 1
