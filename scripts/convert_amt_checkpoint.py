"""Convert VBench's AMT-S checkpoint (amt-s.pth, a pickle) to amt-s.safetensors once, so scoring never unpickles.

    .venv-vbench/bin/python scripts/convert_amt_checkpoint.py                 # $VBENCH_CACHE_DIR/amt_model/amt-s.pth
    .venv-vbench/bin/python scripts/convert_amt_checkpoint.py SRC.pth [DST.safetensors] [--trust-pickle]

The weights-only loader is tried first; the published file needs --trust-pickle (say so only for a file you
got from VBench's release). See tasks/scoring_vbench.py.
"""

import argparse
import sys

from yume.tasks.scoring_vbench import AMT_PTH, VBenchWeightsMissing, cache_dir, convert_amt_checkpoint


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", default=str(cache_dir() / "amt_model" / AMT_PTH))
    p.add_argument("dst", nargs="?", default=None)
    p.add_argument("--trust-pickle", action="store_true", help="unpickle a file the weights-only loader refuses")
    args = p.parse_args()
    try:
        out = convert_amt_checkpoint(args.src, args.dst, trust_pickle=args.trust_pickle)
    except (VBenchWeightsMissing, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
