"""Paths and fsspec URLs of user inputs, read literally.

fsspec reads ``::`` as a chain of URLs (``a::b.mp4`` opens ``a`` inside ``b.mp4``) and ``[`` ``*`` ``?`` as glob
patterns in ``glob``. User paths are names, not patterns: anything without ``<protocol>://`` is a local path
given to the local filesystem as it is, and listings use ``find``/``ls`` (no pattern), never ``glob``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from datagen.units import BadInput

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


def inside_root(root: str, name: str, allow_symlinks: bool = False) -> str:
    """``root/name`` when it stays inside ``root``; else ``BadInput("path_outside_root")``.

    A member name from an input file (a COCO ``file_name``) is untrusted: ``../secret/x.jpg`` and absolute names
    leave the root. For a local root, symlinks are resolved too, so a link inside the root pointing out of it is
    refused unless ``allow_symlinks`` (a config that says so). Object-store paths have no links: their
    normalised path must stay under the root's.
    """
    if is_local(root):
        base = os.path.abspath(os.path.expanduser(root.removeprefix("file://")))
        joined = os.path.normpath(os.path.join(base, name))
        real_base, real = os.path.realpath(base), os.path.realpath(joined)
        outside = os.path.commonpath([base, joined]) != base or (
            not allow_symlinks and os.path.commonpath([real_base, real]) != real_base)
    else:
        protocol, _, base = root.partition("://")
        joined = posixpath.normpath(posixpath.join(base, name))
        outside = posixpath.isabs(name) or posixpath.commonpath([base.rstrip("/"), joined]) != base.rstrip("/")
        joined = f"{protocol}://{joined}"
    if outside:
        raise BadInput("path_outside_root", f"{name!r} leaves the input root {root}"
                                            + ("" if allow_symlinks else " (symlinks resolved)"))
    return joined


def is_regular_file(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """False for FIFOs, devices and sockets (and links to them): opening one can block a listing forever or
    read without end. Object stores hold regular files only."""
    if not isinstance(fs, LocalFileSystem):
        return True
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
