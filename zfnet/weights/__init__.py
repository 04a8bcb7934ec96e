"""Weights in and out: our ``.npz`` format, PyTorch ``.pth`` and Caffe ``.caffemodel``.

Nothing here runs code from a file: PyTorch pickles go through an unpickler that
admits only tensor-rebuilding names (:mod:`zfnet.weights.pth`), and Caffe files are
decoded from the protobuf wire format by hand (:mod:`zfnet.weights.caffe`).
"""

from .caffe import read_caffemodel, write_caffemodel
from .prototxt import parse_prototxt
from .pth import read_pth

__all__ = ["read_pth", "read_caffemodel", "write_caffemodel", "parse_prototxt"]
