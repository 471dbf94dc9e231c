"""Neural fields of GSTalker: hash-grid tri-plane and the expression- / pose-driven deformation
fields. Pure torch; no nerfstudio import."""

from .deformation import DeformationOutput, ExpressionDeformationField, PoseDeformationField, apply_deformation
from .hash_triplane import HashGrid2D, HashTriplane, tcnn_available

__all__ = [
    "DeformationOutput",
    "ExpressionDeformationField",
    "HashGrid2D",
    "HashTriplane",
    "PoseDeformationField",
    "apply_deformation",
    "tcnn_available",
]
