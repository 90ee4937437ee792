"""Rephrasing the training questions with a large instruct model (Co-rewarding-I's rephrased view).

`prompt` (the release's instruction and the reply parser), `engines` (vLLM, transformers), `output`
(the questions in, the resumable JSONL and the parquets out), `run` (`rewrite_dataset`). The command
line is the repository's top-level `rewrite_questions.py`, where the release keeps it.
"""

from corewarding.rewrite.engines import Engine, Generation, HFEngine, VLLMEngine, as_reply
from corewarding.rewrite.output import RewriteError, check_paths, load_done, load_questions
from corewarding.rewrite.prompt import INSTRUCTION, REJECTIONS, Parsed, Reply, build_request, parse_rewrite, read_rewrite
from corewarding.rewrite.run import BatchResult, rewrite_batch, rewrite_dataset

__all__ = [
    "INSTRUCTION",
    "REJECTIONS",
    "BatchResult",
    "Engine",
    "Generation",
    "HFEngine",
    "Parsed",
    "Reply",
    "RewriteError",
    "VLLMEngine",
    "as_reply",
    "build_request",
    "check_paths",
    "load_done",
    "load_questions",
    "parse_rewrite",
    "read_rewrite",
    "rewrite_batch",
    "rewrite_dataset",
]
