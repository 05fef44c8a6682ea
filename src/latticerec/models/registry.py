"""The model registry: a literal dict from CLI name to model class.

Every class has a ``Config`` (frozen dataclass) and ``from_inputs(cfg, inputs)``.
"""

from __future__ import annotations

from latticerec.errors import ConfigError
from latticerec.models.backbones import MF, NGCF, LightGCN
from latticerec.models.bm3 import BM3
from latticerec.models.cb import ContentBased
from latticerec.models.freedom import Freedom
from latticerec.models.grcn import GRCN
from latticerec.models.itemknn import ItemKNN
from latticerec.models.lattice import Lattice
from latticerec.models.micro import Micro
from latticerec.models.mmgcn import MMGCN
from latticerec.models.mmgef import MMGEF
from latticerec.models.pop import Popularity
from latticerec.models.sgl import SGL
from latticerec.models.vbpr import VBPR

MODELS = {
    "mf": MF,
    "lightgcn": LightGCN,
    "ngcf": NGCF,
    "lattice": Lattice,
    "micro": Micro,
    "mmgef": MMGEF,
    "cb": ContentBased,
    "pop": Popularity,
    "itemknn": ItemKNN,
    "vbpr": VBPR,
    "freedom": Freedom,
    "sgl": SGL,
    "mmgcn": MMGCN,
    "grcn": GRCN,
    "bm3": BM3,
}

# backbones a multimodal model (a class with ``wraps_backbone = True``) can wrap
BACKBONES = {
    "mf": MF,
    "lightgcn": LightGCN,
    "ngcf": NGCF,
}


def get_backbone_class(name: str):
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None


def get_model_class(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None
