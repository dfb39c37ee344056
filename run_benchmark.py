#!/usr/bin/env python
"""medssl-bench: pretrain SSL methods and evaluate them with linear probing and fine-tuning.

Examples:
  python run_benchmark.py --suite quick                 # the embedded default (synthetic data, CPU, minutes)
  python run_benchmark.py --suite quick --dry-run       # print every job and whether it is done
  python run_benchmark.py --suite miccai2024 --data-root /data --device cuda
  python run_benchmark.py report --suite quick          # rebuild Table 1/2 from stored results only
  python run_benchmark.py --list                        # suites, methods, datasets
  python run_benchmark.py prepare --dataset nih_chestxray14 --data-root /data   # check the layout, build the cache
  python run_benchmark.py --suite quick --encoder imagenet=weights/resnet18-f37072fd.pth   # your own encoder as a row
  python run_benchmark.py export --suite quick --method coboom   # trunks as .safetensors for torchvision
  python run_benchmark.py COMMAND --help                # each command's options
"""

import sys

from medssl.cli.main import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        sys.exit(0)
