"""Preprocess a public math dataset into the verl parquet schema (data/README.md).

    python scripts/preprocess.py math                       # hub -> data/math/{train,test}.parquet
    python scripts/preprocess.py gsm8k --local_path /path/to/gsm8k_test.jsonl --output_dir data/gsm8k
    python scripts/preprocess.py builtin                    # the offline set -> data/builtin/{train,train_rewrite,val}.parquet
    python scripts/preprocess.py math_rephrased             # the authors' rephrased MATH -> data/math/train_rewrite_Qwen3-32B.parquet

Datasets: math (DigitalLearningGmbH/MATH-lighteval), dapo (open-r1/DAPO-Math-17k-Processed),
openrs (knoveleng/open-rs), gsm8k (openai/gsm8k), math500 (HuggingFaceH4/MATH-500),
amc (AI-MO/aimo-validation-amc), amc23 (math-ai/amc23), aime24 (HuggingFaceH4/aime_2024);
the authors' rephrased training sets math_rephrased, dapo_rephrased, openrs_rephrased
(TMLR-Group-HF/Co-rewarding-Rephrased{MATH,DAPO-14k,OpenRS}), written beside their originals and
checked against them (pairs on extra_info.index) when the originals are there.
Without --local_path the records come from the hub through `datasets` (needs network access and
`pip install datasets`, the optional extra `.[hub]`).
`builtin` writes the generated offline dataset (one-shot system prompt unless --system_prompt is given).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow.parquet as pq

from corewarding.data.builtin import ONE_SHOT_SYSTEM_PROMPT, write_builtin_dataset
from corewarding.data.pairs import load_pairs
from corewarding.data.preprocess import DATASETS, preprocess
from corewarding.data.schema import SYSTEM_PROMPT, DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS) + ["builtin"], help="which dataset")
    parser.add_argument("--local_path", default=None, help="read this .parquet/.jsonl/.json instead of the hub")
    parser.add_argument("--split", default=None, help="split to write (default: all hub splits, or inferred from --local_path)")
    parser.add_argument("--output_dir", default=None,
                        help="folder for <split>.parquet (default: data/<dataset>; a rephrased set: its originals' folder)")
    parser.add_argument("--output", default=None, help="exact output file (one split)")
    parser.add_argument("--system_prompt", default=None, help="system message (default: the paper's; '' for none)")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N usable rows")
    parser.add_argument("--n_train", type=int, default=512, help="builtin: training problems")
    parser.add_argument("--n_val", type=int, default=64, help="builtin: validation problems")
    parser.add_argument("--seed", type=int, default=0, help="builtin: generator seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.dataset == "builtin":
        prompt = ONE_SHOT_SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt or None
        written = write_builtin_dataset(args.output_dir or "data/builtin", args.n_train, args.n_val, args.seed, prompt)
        for name, path in written.items():
            print(f"builtin/{name}: {path}")
        return 0
    spec = DATASETS[args.dataset]
    output_dir = Path(args.output_dir or Path("data") / (spec.twin_of or args.dataset))
    try:
        written = preprocess(
            args.dataset,
            output_dir=output_dir,
            local_path=args.local_path,
            split=args.split,
            system_prompt=SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt or None,
            limit=args.limit,
            output=args.output,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, path in written.items():
        print(f"{args.dataset}/{split}: {path}")
    if spec.twin_of is not None:
        return check_twins(output_dir / "train.parquet", written["train"] if "train" in written else next(iter(written.values())))
    return 0


def check_twins(originals: Path, rephrased: Path) -> int:
    """Pair a rephrased set with its originals as a Co-rewarding run will, and say how many pairs."""
    if not originals.exists():
        print(f"{originals} is not there yet: make it (preprocess.py {rephrased.parent.name}) and the pairs are "
              "checked when a run starts")
        return 0
    try:
        pairs = load_pairs(originals, rephrased)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = pq.ParquetFile(originals).metadata.num_rows
    print(f"pairs: {len(pairs)} of the {total} questions in {originals} have a rephrased twin in {rephrased}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
