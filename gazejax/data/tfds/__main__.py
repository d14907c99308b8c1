"""Builds a gazejax TFDS data set from its manual folder (array_record; TensorFlow not needed).

  python -m gazejax.data.tfds build brats2020 --manual_dir=/data/brats2020 --data_dir=~/tensorflow_datasets
  python -m gazejax.data.tfds build egd_cxr --manual_dir=/data/physionet --data_dir=gs-mount/tfds \
      --image_size=1536,1280 [--pad=symmetric] [--reader=source=eye_gaze]
  python -m gazejax.data.tfds instructions reflacx
"""
from __future__ import annotations

import argparse
import os
import sys

from gazejax.data import tfds as gtfds


def _reader_options(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise SystemExit(f"--reader: {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gazejax.data.tfds", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("build", "instructions"))
    parser.add_argument("name", choices=gtfds.NAMES)
    parser.add_argument("--manual_dir", default="", help="folder with the data set's own files (see instructions)")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="where the TFDS files are written")
    parser.add_argument("--image_size", default="512,416", help="CXR only: H,W of the stored images")
    parser.add_argument("--pad", default="symmetric", choices=("symmetric", "end"), help="CXR only: padding")
    parser.add_argument("--reader", default="", help="CXR only: reader options key=val,... (e.g. source=eye_gaze)")
    args = parser.parse_args(argv)
    cls = gtfds.builder_class(args.name)
    if args.action == "instructions":
        print(cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return 0
    from gazejax.data.tfds import common

    kwargs = {"data_dir": os.path.expanduser(args.data_dir), "file_format": common.FILE_FORMAT}
    if args.name != "brats2020":
        from gazejax.data.tfds import cxr

        size = tuple(int(s) for s in args.image_size.split(","))
        kwargs["config"] = cxr.make_config(size, args.pad, _reader_options(args.reader))
    if not args.manual_dir or not os.path.isdir(args.manual_dir):
        print(f"--manual_dir {args.manual_dir!r} is not a folder. {cls.MANUAL_DOWNLOAD_INSTRUCTIONS}", file=sys.stderr)
        return 2
    builder = common.ensure_built(cls(**kwargs), os.path.abspath(args.manual_dir))
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    config = builder.builder_config.name if builder.builder_config else ""
    print(f"{builder.name}/{config}: {builder.data_dir} {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
