"""Submission contract: `python evaluate.py --data EVAL_DIR --weights FILE` prints the classification report.

Same code as `illustra evaluate`; run from the repository root, relative paths work as given.
"""

import sys

from illustra.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main(sys.argv[1:]))
