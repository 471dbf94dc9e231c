"""Rendering videos of the avatar: frame helpers, the render loop, and the `gstalker-render` CLI."""
