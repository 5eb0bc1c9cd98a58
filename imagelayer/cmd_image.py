"""``pyimg image``: base + layers -> an OCI layout dir, OCI tar, or docker-loadable tar."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional

from mtree.entry import argv_text

DESCRIPTION = """\
Assemble an OCI image. Layers stack in the order given: the --base image's layers, then the
--layer files and the layers listed in each --layers-json (pyimg py-image-layer output), in
the order of those options on the command line.
The base's layers are checked first: an absolute or escaping member name, a member written
through a symlink, a NUL, an empty name, a bare .wh., a truncated tar or a wrong diff_id refuses
the base (exit 2, nothing written).

--platform picks the base image as containerd does (os/architecture, and the variant when
given, else the default one or the only one); without it a multi-platform base gives this
host's platform, and no match is an error listing what the base has. The config keeps the
base's platform (variant included), else gets --platform's, else linux/amd64; it gets
rootfs.diff_ids from the layers, one history entry per layer, and created = --created (RFC
3339 as docker's Go parser reads it), else $SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z.
--env/--label extend the base's (an existing key is replaced in place, as docker's ENV does);
--entrypoint/--cmd/--workdir/--user replace them (a new --entrypoint without --cmd clears the
base's Cmd, as docker does). Tags follow docker's reference grammar. At most 125 layers, the
base's included (docker's limit). JSON is canonical, so two runs give identical digests.

Formats: oci-dir (an OCI image layout directory), oci-tar (the same as one tar), docker (one tar
that is an OCI layout and carries docker's manifest.json, as 'docker save' >= 25 writes; loads on
classic-store engines too). In the docker format layers that are not gzip are recompressed to
gzip unless --docker-compression keep (for engines known to read zstd).
"""


def _argv_list(text: str) -> List[str]:
    """A JSON array (``'["/app/server", "-v"]'``), or one argument; '' clears."""
    text = argv_text(text)
    if text == "":
        return []
    if text.lstrip().startswith("["):
        import json
        try:
            v = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON array: {exc}") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise argparse.ArgumentTypeError("expected a JSON array of strings")
        return v
    return [text]


class _Source(argparse.Action):
    """``--layer`` / ``--layers-json``: each list as usual, and both in command-line order in
    ``sources`` (the order the layers stack in)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        # new lists, as argparse's "append" makes: the defaults are shared between parses
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        kind = "layers-json" if self.dest == "layers_json" else "layer"
        namespace.sources = [*(getattr(namespace, "sources", None) or []), (kind, values)]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("image", help="assemble an OCI image (layout dir, OCI tar or "
                                            "docker tar) from a base and layers",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="Exit codes: 0 success; 1 the output cannot be written (or another I/O "
                                     "failure); 2 bad input or usage.")
    p.add_argument("--layer", action=_Source, default=[], metavar="FILE",
                   help="a layer blob (.tar, .tar.gz, .tar.zst; compression is sniffed); "
                        "repeatable")
    p.add_argument("--layers-json", action=_Source, default=[], metavar="FILE",
                   help="a py-image-layer layers.json, for its layers in its order; "
                        "repeatable, and mixes with --layer in command-line order")
    p.add_argument("--base", metavar="LAYOUT", help="base image: an OCI layout dir or OCI tar")
    p.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="the image layout directory (oci-dir) or tar (oci-tar, docker); '-' "
                        "streams a tar format to standard output (say, into 'docker load'), "
                        "the summary then goes to standard error")
    p.add_argument("--format", default="oci-dir", choices=("oci-dir", "oci-tar", "docker"),
                   help="what OUT is (see Formats above; default: oci-dir)")
    p.add_argument("--tag", action="append", default=[], metavar="NAME:TAG",
                   help="org.opencontainers.image.ref.name in index.json (and RepoTags for "
                        "docker); repeatable")
    p.add_argument("--entrypoint", type=_argv_list, metavar="ARGV",
                   help="JSON array, or a single argument; '' clears")
    p.add_argument("--cmd", type=_argv_list, metavar="ARGV",
                   help="JSON array, or a single argument; '' clears")
    p.add_argument("--env", action="append", default=[], metavar="K=V", type=argv_text,
                   help="an environment variable of the config (repeatable; replaces the "
                        "base's value of K in place)")
    p.add_argument("--workdir", metavar="DIR", type=argv_text, help="the config's WorkingDir (replaces the base's)")
    p.add_argument("--user", metavar="USER[:GROUP]", type=argv_text,
                   help="the config's User, a name or id (replaces the base's)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", type=argv_text,
                   help="a config label (repeatable; replaces the base's value of K)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the base image to use from a multi-platform base, and the platform "
                        "of an image without a base (default: the base's, else linux/amd64)")
    p.add_argument("--created", metavar="RFC3339", help="e.g. 2024-01-02T03:04:05Z (default: "
                   "$SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z)")
    p.add_argument("--docker-compression", default="gzip", choices=("gzip", "keep"),
                   help="docker format only: gzip (default) recompresses zstd and "
                        "uncompressed layers to gzip; keep leaves them as they are")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, sources=[])


def run(args: argparse.Namespace) -> int:
    from mtree.errors import PyimgError

    from .image import STDOUT, ImageOptions, assemble

    from mtree.atomic import refuse_inputs_as_output

    output, report = args.output, sys.stdout
    # (an --output that is the --base layout is replaced by its extension, after success)
    refuse_inputs_as_output("--output", output, [
        *[("a --layer", p) for p in args.layer],
        *[("a --layers-json", p) for p in args.layers_json]])
    if output == "-":
        if args.format == "oci-dir":
            raise PyimgError("--output - needs a tar format (--format oci-tar or docker)")
        if os.isatty(1):
            raise PyimgError("--output -: refusing to write a tar to a terminal")
        output, report = STDOUT, sys.stderr
    opts = ImageOptions(output=output, format=args.format, layers=args.layer,
                        layers_json=args.layers_json, sources=args.sources,
                        base=args.base, tags=args.tag,
                        entrypoint=args.entrypoint, cmd=args.cmd, env=args.env,
                        workdir=args.workdir, user=args.user, labels=args.label,
                        platform=args.platform, created=args.created,
                        docker_compression=args.docker_compression)
    res = assemble(opts)
    if args.json:
        import json
        report.write(json.dumps(res.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        out: Optional[str] = None
        out = (f"{res.format} {res.output}\n  manifest {res.manifest.digest}\n"
               f"  config   {res.config.digest}\n  index    {res.index_digest}\n"
               f"  layers   {len(res.layers)}\n")
        for t in res.tags:
            out += f"  tag      {t}\n"
        report.write(out)
    return 0
