"""atheris entry point: the mtree parser must fail only with MtreeError / PyimgError.

    pip install atheris
    python3 fuzz/fuzz_mtree.py -max_total_time=60 [corpus_dir]

Without atheris, ``python3 fuzz/fuzz_mtree.py FILE...`` runs the same check on each FILE.
"""
from __future__ import annotations

import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import atheris
except ImportError:  # plain replay mode
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["mtree"]):
        from mtree.errors import PyimgError
        from mtree.parse import parse
else:
    from mtree.errors import PyimgError  # noqa: E402
    from mtree.parse import parse  # noqa: E402


def test_one_input(data: bytes) -> None:
    try:
        parse(io.BytesIO(data), filename="fuzz.mtree", warn=lambda _m: None)
    except PyimgError:
        pass


def main() -> None:
    if atheris is None:
        for p in sys.argv[1:]:
            with open(p, "rb") as f:
                test_one_input(f.read())
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
