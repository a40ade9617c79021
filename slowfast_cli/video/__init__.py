"""Video decoding: sampling policies, decord's decoder and its FFmpeg, frame geometry.

- ``sampling``: which frames (pure functions, no decord);
- ``decode``: decord itself (the only module that imports it): ``probe`` and ``load_clip``;
- ``files``: what is wrong with a file, in one line; ``libav``: a ctypes view of decord's FFmpeg;
- ``geometry``: display orientation, decode-time size and crop; ``info``: ``VideoInfo`` and ``Clip``.

What decord (decord2 3.4.0) does and what slowfast makes of it: ``docs/decord.md``.
"""
