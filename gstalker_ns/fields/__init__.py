"""Neural fields of GSTalker: hash-grid tri-plane, audio encoder with temporal smoothing, and
the audio- / pose-driven deformation fields. Pure torch; no nerfstudio import."""

from .audio_smoothing import AudioEncoder, AudioSmoother, SmoothedAudioEncoder, neighbour_indices
from .deformation import AudioDeformationField, DeformationOutput, PoseDeformationField, apply_deformation
from .hash_triplane import HashGrid2D, HashTriplane, tcnn_available

__all__ = [
    "AudioDeformationField",
    "AudioEncoder",
    "AudioSmoother",
    "DeformationOutput",
    "HashGrid2D",
    "HashTriplane",
    "PoseDeformationField",
    "SmoothedAudioEncoder",
    "apply_deformation",
    "neighbour_indices",
    "tcnn_available",
]
