"""CLI: `python -m gazejax.data.synthetic {brats,egd_cxr,reflacx} --out DIR ...` writes a synthetic data set."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    kinds = {"brats": "gazejax.data.synthetic.brats", "egd_cxr": "gazejax.data.synthetic.cxr",
             "reflacx": "gazejax.data.synthetic.cxr"}
    if not argv or argv[0] not in kinds:
        print(f"usage: python -m gazejax.data.synthetic {{{','.join(kinds)}}} --out DIR [options]", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(kinds[argv[0]])
    return module.cli(argv)


if __name__ == "__main__":
    sys.exit(main())
