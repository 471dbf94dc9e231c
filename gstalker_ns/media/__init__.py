"""Media helpers: `video.write_mp4` (H.264 + AAC mp4 via PyAV or imageio-ffmpeg)."""
