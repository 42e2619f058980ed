"""Paths and fsspec URLs of user inputs, read literally.

fsspec reads ``::`` as a chain of URLs (``a::b.mp4`` opens ``a`` inside ``b.mp4``) and ``[`` ``*`` ``?`` as glob
patterns in ``glob``. User paths are names, not patterns: anything without ``<protocol>://`` is a local path
given to the local filesystem as it is, and listings use ``find``/``ls`` (no pattern), never ``glob``.
"""

from __future__ import annotations

import os
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

_LOCAL = LocalFileSystem()


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of a local path or fsspec URL; local paths never go through URL chaining."""
    if is_local(url):
        return _LOCAL, os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
    return fsspec.core.url_to_fs(url)


def open_url(url: str, mode: str = "rb") -> IO:
    fs, path = url_to_fs(url)
    return fs.open(path, mode)
