"""Weights in and out: our ``.npz`` format, PyTorch ``.pth`` and Caffe ``.caffemodel``.

* :func:`save` / :func:`load`: the native format (float arrays named like
  ``state_dict()`` plus JSON metadata) and loading of every supported format onto
  our models, the architecture chosen from keys and shapes (:mod:`.native`).
* :func:`read_pth`: PyTorch checkpoints as NumPy arrays, without torch (:mod:`.pth`).
* :func:`read_caffemodel` / :func:`write_caffemodel`: Caffe's binary protobuf
  (:mod:`.caffe`, :mod:`.protobuf`); :func:`parse_prototxt`: its text format;
  :mod:`.caffe_net`: a Caffe network definition built into a zfnet network, layer
  by layer (what :func:`load` does with a ``.caffemodel`` or ``prototxt=``).

Nothing here runs code from a file: PyTorch pickles run on a pickle machine of our
own (:mod:`.safepickle`) that admits only tensor-rebuilding names and meters its work
and memory per byte, and Caffe files are decoded from the protobuf wire format by
hand.
"""

from .bundled import bundled_weights_path
from .caffe import read_caffe_net, read_caffemodel, write_caffemodel
from .native import convert, detect_format, load, read_npz, save
from .prototxt import parse_prototxt
from .pth import read_pth

__all__ = [
    "save", "load", "convert", "read_npz", "detect_format",
    "read_pth", "read_caffemodel", "read_caffe_net", "write_caffemodel", "parse_prototxt", "bundled_weights_path",
]
