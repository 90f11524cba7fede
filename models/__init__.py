"""Problems (model + data + loss) and the models and data sets they are built from."""

from . import checks as checks
from . import data as data
from .activations import cubic as cubic
from .conv import CNN as CNN
from .conv import ResNet as ResNet
from .conv import unfold as unfold
from .linear import Linear as Linear
from .linear import QuadraticParam as QuadraticParam
from .linear import RandomFeatures as RandomFeatures
from .matrix import MatrixFactorization as MatrixFactorization
from .mlp import MLP as MLP
from .problem import Problem as Problem
from .two_layer import TwoLayerNet as TwoLayerNet
from .vit import ViT as ViT

__all__ = [
    "checks",
    "data",
    "cubic",
    "CNN",
    "ResNet",
    "unfold",
    "Linear",
    "QuadraticParam",
    "RandomFeatures",
    "MatrixFactorization",
    "MLP",
    "Problem",
    "TwoLayerNet",
    "ViT",
]
