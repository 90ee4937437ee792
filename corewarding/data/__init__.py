"""Data: verl-schema parquet datasets, the (original, rephrased) pairs of Co-rewarding-I, batching,
a resumable loader, the built-in offline dataset and preprocessing of the public math sets."""

from corewarding.data.chat import chat_prompt_ids, load_tokenizer, pad_token_id
from corewarding.data.builtin import ONE_SHOT_SYSTEM_PROMPT, builtin_problems, write_builtin_dataset
from corewarding.data.dataset import PairedRLDataset, RLDataset, StatefulLoader, left_pad, to_batch
from corewarding.data.pairs import load_pairs
from corewarding.data.schema import (
    SYSTEM_PROMPT,
    DataError,
    make_row,
    read_verl_parquet,
    user_content,
    write_verl_parquet,
)

__all__ = [
    "DataError",
    "ONE_SHOT_SYSTEM_PROMPT",
    "PairedRLDataset",
    "RLDataset",
    "SYSTEM_PROMPT",
    "StatefulLoader",
    "builtin_problems",
    "chat_prompt_ids",
    "left_pad",
    "load_tokenizer",
    "load_pairs",
    "make_row",
    "pad_token_id",
    "read_verl_parquet",
    "to_batch",
    "user_content",
    "write_builtin_dataset",
    "write_verl_parquet",
]
