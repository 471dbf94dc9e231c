"""What drives the avatar frame by frame when it speaks new audio: feature windows, blinks, poses.

Shared by `gstalker-render` and the viewer's audio panel, so both map audio to frames the same way.
"""
