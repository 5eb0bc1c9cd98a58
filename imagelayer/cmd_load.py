"""``pyimg load``: load a docker-format tar or an OCI layout into docker (docker SDK)."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "load", help="load an image tar or OCI layout into a docker engine",
        description="Load a docker-format tar (pyimg image --format docker, docker save), or "
                    "an OCI layout dir/tar (re-packaged into a docker-format tar on the fly, "
                    "same image ID), through the docker SDK. The engine is "
                    "$PYIMG_DOCKER_HOST, else $DOCKER_HOST, else docker's default. Prints the "
                    "image ID and the tags this load applied (the archive's RepoTags or the "
                    "layout's ref.name references, then --tag).",
        epilog="Exit codes: 0 loaded; 1 the engine is unreachable, I/O failed, or the engine "
               "refused a tag after loading; 2 bad input (a tag docker's grammar refuses, a "
               "--platform the layout lacks) or the engine refused the image.")
    p.add_argument("image", metavar="IMAGE_TAR|OCI_LAYOUT")
    p.add_argument("--tag", action="append", default=[], metavar="NAME:TAG",
                   help="tag the loaded image (repeatable; checked before loading)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the image to load from a multi-platform OCI layout (default: the "
                        "only one, else this host's platform)")
    p.add_argument("--host", metavar="URL",
                   help="docker engine, e.g. unix:///run/docker.sock (wins over "
                        "$PYIMG_DOCKER_HOST and $DOCKER_HOST)")
    p.add_argument("--docker-compression", default="gzip", choices=("gzip", "keep"),
                   help="when re-packaging an OCI layout: recompress non-gzip layers to gzip "
                        "(default) or keep them (engine reads zstd)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .dockerload import DaemonUnreachable, TagFailed, load

    try:
        res = load(args.image, args.tag, host=args.host,
                   docker_compression=args.docker_compression, platform=args.platform)
    except DaemonUnreachable as exc:
        sys.stderr.write(f"pyimg: error: {exc}\n")
        return 1
    except TagFailed as exc:
        sys.stdout.write(f"Loaded image ID: {exc.image_id}\n")
        sys.stderr.write(f"pyimg: error: {exc}\n")
        return 1
    sys.stdout.write(f"Loaded image ID: {res.image_id}\n")
    for t in res.tags:
        sys.stdout.write(f"Loaded image: {t}\n")
    return 0
