"""Evaluate a model or one of our checkpoints on math benchmarks: pass@1, avg@k, maj@k, pass@k.

    python -m corewarding.eval --model checkpoints/co-rewarding/run1 --benchmarks math500,gsm8k,amc \\
        --k 8 --temperature 0.8 --max_tokens 3072 --output_dir outputs/eval/run1

Every question is sampled k times with the chat template of the model's tokenizer applied to the
row's prompt messages; the last `\\boxed{}` of each response is graded against
`reward_model.ground_truth` by `--gt_scorer`, the training's `reward_model.gt_scorer`: math_verify
(the reward library's math equivalence, the default) or hendrycks (the MATH benchmark's string
normalisation: the release's scorer, for release-exact numbers).

Per benchmark:
  pass@1          mean over questions of the fraction of the k samples that are correct
  avg@k           the same number under the name the paper uses for AMC (avg@8)
  maj@k           the majority answer of the k samples (reward library's vote, math equivalence;
                  empty answers never win) graded against the ground truth
  pass@k          a question counts when any of its k samples is correct
  answer_present  fraction of samples with a non-empty \\boxed{} answer

Writes `summary.json` and `samples.jsonl` (one line per sample) into --output_dir.

`--num_gpus N` puts one engine on each of N GPUs, each in a process of its own with a contiguous
share of every benchmark's batches (the results are merged back in question order and equal the
one-engine run's); `--tensor_parallel_size T` splits each engine over T of them. `--lm_eval TASKS`
also runs lm-evaluation-harness tasks (the paper's IFEval and MMLU-Pro: `harness.py`).

The modules, one job each: `scoring.py` (grading and the metrics, pure), `benchmarks.py` (the
benchmark files in, samples.jsonl records out), `sampling.py` (the engine's samples of each
benchmark, here or in `parallel.py`'s processes), `harness.py` (lm-evaluation-harness), `cli.py`
(the command line and the run; `python -m corewarding.eval` runs its `main`).
"""


class EvalError(ValueError):
    """A bad argument or input file; the message says what to fix."""
