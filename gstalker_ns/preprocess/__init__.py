"""Preprocessing: a raw talking-portrait video -> a gstalker training folder.

``gstalker-process VIDEO OUT/`` runs these stages in order; each writes its own files under
``OUT/`` and a small JSON manifest LAST, so an interrupted run resumes at the first stage whose
manifest is missing or no longer matches its input (options, input fingerprint, stage version):

1. **decode** (:mod:`gstalker_ns.preprocess.decode`): the video at a regular 25 fps as
   ``frames/000000.jpg ...`` (display orientation applied), its speech as ``audio.wav``
   (16 kHz mono, trimmed/padded to the frame count), manifest ``decode.json``. Refuses
   unusable input (unreadable, no audio, silent, shorter than 1 s) before doing any work.
2. **landmarks**: 2D face landmarks per frame.
3. **poses**: head pose per frame -> the cameras of ``transforms.json``.
4. **masks / background**: label maps ``masks/*.png`` and the clean ``background.png``.
5. **features**: ``audio_features.npy`` from ``audio.wav``.
6. **write**: ``transforms.json`` (see ``docs/dataset_layout.md``).

Stages stream frame by frame (memory does not grow with the clip length), show a progress bar,
and report bad input as one-line :class:`~gstalker_ns.errors.GstalkerUserError` subclasses.
Only stage 1 exists so far.
"""

from gstalker_ns.preprocess.decode import (
    DecodeResult,
    ShortClipWarning,
    VideoInfo,
    VideoInputError,
    decode_video,
    extract_audio,
    iter_frames_25fps,
    probe_video,
    resample_times,
)

__all__ = [
    "DecodeResult",
    "ShortClipWarning",
    "VideoInfo",
    "VideoInputError",
    "decode_video",
    "extract_audio",
    "iter_frames_25fps",
    "probe_video",
    "resample_times",
]
