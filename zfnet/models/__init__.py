"""Model definitions: a configuration plus a declarative list of layers."""

from .alexnet import ALEXNET_VARIANTS, alexnet
from .base import Network
from .caffe_graph import CAFFE_GRAPH, graph_network, recognise
from .squeezenet import squeezenet1_0
from .zfnet import zfnet

__all__ = ["Network", "zfnet", "alexnet", "squeezenet1_0", "ALEXNET_VARIANTS", "build", "ARCHITECTURES",
           "CAFFE_GRAPH", "graph_network", "recognise"]

ARCHITECTURES = ("zfnet", "alexnet", "alexnet-torchvision", "squeezenet1_0")


def build(arch: str, **kwargs) -> Network:
    """Build a model by name: ``zfnet``, ``alexnet`` (Caffe layout), ``alexnet-torchvision``, ``squeezenet1_0``."""
    from ..errors import ConfigError

    if arch == "zfnet":
        return zfnet(**kwargs)
    if arch in ("alexnet", "alexnet-caffe"):
        return alexnet("caffe", **kwargs)
    if arch == "alexnet-torchvision":
        return alexnet("torchvision", **kwargs)
    if arch == "squeezenet1_0":
        return squeezenet1_0(**kwargs)
    raise ConfigError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
