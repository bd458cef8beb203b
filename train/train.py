"""Training entry point for launchers that want a script path:

    python train/train.py --config train/configs/smollm2_kjv_stage1.yaml
    torchrun --nproc_per_node 2 train/train.py --config ...
    deepspeed --num_gpus 8 train/train.py --config ... --set distributed.engine=deepspeed
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lcirc_fast.cli import train as train_cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="train.py")
    sub = parser.add_subparsers(dest="command")
    train_cli.add_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return train_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
