"""Data shared by pretraining and transfer: robust image decoding, Fashion-MNIST from disk."""

from bitdet.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, read_idx
from bitdet.data.images import DecodeStats, decode_image, decode_stats, load_image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DecodeStats",
    "FashionMNIST",
    "decode_image",
    "decode_stats",
    "load_image",
    "read_idx",
]
