"""Model inputs for a micro-batch of rollouts, padded or packed, and micro-batches by token budget.

A rollout row is a left-padded prompt of width P followed by a right-padded response of width R
(`input_ids` [N, P + R], `attention_mask` [N, P + R], `response_mask` [N, R]). The trainer needs the
log-prob (and entropy) of each real response token, predicted by the hidden state one position
earlier. Both layouts below give the model inputs plus `target_positions`: for every real response
token, in row-major order of `response_mask`, its predicting position in the flattened [B * L]
hidden states. Only those M positions go through the output embedding.

- `padded_inputs`: the rows as they are, with the attention mask (B = N, L = P + R).
- `packed_inputs` (`model.use_remove_padding=True`): the real tokens of all rows concatenated into
  one sequence (B = 1, L = total real tokens) with per-row `position_ids` restarting at 0 and no
  attention mask; transformers then keeps the rows apart (flash-attention varlen on GPU, a
  block-diagonal mask with SDPA / eager), so no compute goes to padding. The row boundaries for
  flash-attention (`ModelInputs.varlen_kwargs`) come with them, so that transformers does not derive
  them again from the position ids in every layer.
- `shared_prefix_inputs`: packed too, with one copy of each distinct prompt, which all the rollouts
  of that prompt in the micro-batch attend to (a 4-D mask), so a prompt's tokens are computed once.

Both packed layouts also give their segments (`ModelInputs.attention_segments`: a row; a shared
prompt; a response and the prompt it reads), which the `sdpa_segments` attention takes instead of a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from corewarding.batch import Batch
from corewarding.workers.model.segment_attention import Segment

__all__ = ["ModelInputs", "packed_inputs", "padded_inputs", "scatter_to_rows", "shared_prefix_inputs", "split_to_count",
           "token_budget_groups"]


@dataclass(frozen=True)
class ModelInputs:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor | None  # [B, L]; None when packed
    target_positions: torch.Tensor  # [M] into the flattened [B * L] hidden states
    targets: torch.Tensor  # [M] response token ids, row-major over response_mask
    cu_seq_lens: torch.Tensor | None = None  # packed: int32 [rows + 1], where each row starts, then the total
    max_length: int | None = None  # packed: the longest row's tokens
    segments: tuple[Segment, ...] | None = None  # shared_prefix: what each span of the sequence attends to

    def varlen_kwargs(self) -> dict[str, Any]:
        """The packed rows' boundaries as transformers' flash-attention takes them through the model's
        forward (`FlashAttentionKwargs`); empty for the other layouts."""
        if self.cu_seq_lens is None:
            return {}
        # self-attention over the same rows: the key boundaries are the query boundaries
        return {"cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}

    def attention_segments(self) -> tuple[Segment, ...] | None:
        """What each span of a packed sequence attends to (`sdpa_segments`); packed rows' come from
        their boundaries, read from the device only here (the flash-attention path never asks)."""
        if self.segments is not None or self.cu_seq_lens is None:
            return self.segments
        bounds = self.cu_seq_lens.tolist()
        return tuple(Segment(start, end) for start, end in zip(bounds[:-1], bounds[1:]))


def _response_coordinates(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every real response token, row-major."""
    rows, cols = response_mask.bool().nonzero(as_tuple=True)
    return rows, cols


def padded_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, response_mask: torch.Tensor
) -> ModelInputs:
    width = input_ids.shape[1]
    prompt_width = width - response_mask.shape[1]
    rows, cols = _response_coordinates(response_mask)
    return ModelInputs(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        target_positions=rows * width + prompt_width - 1 + cols,
        targets=input_ids[rows, prompt_width + cols],
    )


def packed_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> ModelInputs:
    prompt_width = input_ids.shape[1] - response_mask.shape[1]
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    prompt_lengths = real[:, :prompt_width].sum(dim=1)
    ends = torch.cumsum(lengths, dim=0)
    starts = ends - lengths
    total, longest = torch.stack([ends[-1], lengths.max()]).tolist()  # one device sync for both
    positions = torch.arange(total, device=input_ids.device) - torch.repeat_interleave(starts, lengths)
    rows, cols = _response_coordinates(response_mask)
    return ModelInputs(
        input_ids=input_ids[real].unsqueeze(0),
        position_ids=positions.unsqueeze(0),
        attention_mask=None,
        target_positions=starts[rows] + prompt_lengths[rows] - 1 + cols,
        targets=input_ids[rows, prompt_width + cols],
        # flash-attn's varlen kernels take int32 offsets and an int maximum: a Python int here, so that
        # no layer reads one back from the device
        cu_seq_lens=torch.nn.functional.pad(ends, (1, 0)).to(torch.int32),
        max_length=longest,
    )


def shared_prefix_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                         dense_mask: bool = True) -> ModelInputs:
    """Packed, with one copy of each distinct prompt: a GRPO micro-batch holds several rollouts of the
    same prompt, and each of its responses attends to that one copy. Per group of rows with equal
    prompts the sequence holds the prompt (positions 0 .. p-1), then each response (positions p ..);
    a 4-D attention mask lets a token see the earlier tokens of its group's prompt and of its own
    response only. The prompt's hidden states get the gradient of every response that reads them, as
    the separate copies would. The mask is [T, T] and needs an attention that accepts one (SDPA,
    eager): for short sequences with long shared prompts (the CPU runs), not for flash-attention.
    `dense_mask=False` leaves it out: the `sdpa_segments` attention reads the segments instead."""
    prompt_width = input_ids.shape[1] - response_mask.shape[1]
    real = attention_mask.bool()
    prompts = [tuple(input_ids[i, :prompt_width][real[i, :prompt_width]].tolist()) for i in range(input_ids.shape[0])]
    responses = [input_ids[i, prompt_width:][response_mask[i].bool()].tolist() for i in range(input_ids.shape[0])]
    tokens: list[int] = []
    positions: list[int] = []
    groups: list[int] = []  # per token: its prompt group
    owners: list[int] = []  # per token: its row, -1 for a shared prompt token
    group_of: dict[tuple[int, ...], int] = {}
    last_prompt: dict[tuple[int, ...], int] = {}  # prompt -> position of its last token in the sequence
    starts: list[int] = [0] * len(prompts)  # per row: where its response starts
    segments: list[Segment] = []
    for row, prompt in enumerate(prompts):
        if prompt not in group_of:
            group_of[prompt] = len(group_of)
            groups += [group_of[prompt]] * len(prompt)
            owners += [-1] * len(prompt)
            segments.append(Segment(len(tokens), len(tokens) + len(prompt)))
            tokens += prompt
            positions += range(len(prompt))
            last_prompt[prompt] = len(tokens) - 1
        starts[row] = len(tokens)
        prompt_end = last_prompt[prompt] + 1
        segments.append(Segment(len(tokens), len(tokens) + len(responses[row]), prompt_end - len(prompt), prompt_end))
        groups += [group_of[prompt]] * len(responses[row])
        owners += [row] * len(responses[row])
        tokens += responses[row]
        positions += range(len(prompt), len(prompt) + len(responses[row]))
    visible = None
    if dense_mask:
        group, owner = torch.tensor(groups), torch.tensor(owners)
        visible = (group[:, None] == group[None, :]) & ((owner[None, :] == -1) | (owner[:, None] == owner[None, :]))
        visible &= torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
        visible = visible[None, None].to(input_ids.device)
    predicting = [last_prompt[prompts[row]] if col == 0 else starts[row] + col - 1
                  for row in range(len(prompts)) for col in range(len(responses[row]))]
    device = input_ids.device
    return ModelInputs(
        input_ids=torch.tensor([tokens], device=device),
        position_ids=torch.tensor([positions], device=device),
        attention_mask=visible,
        target_positions=torch.tensor(predicting, device=device, dtype=torch.long),
        targets=torch.tensor([t for r in responses for t in r], device=device, dtype=torch.long),
        segments=tuple(segments),
    )


def scatter_to_rows(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[M] values of the real response tokens (row-major) -> [N, R], zero on padding (autograd flows)."""
    out = values.new_zeros(response_mask.shape)
    return out.index_put(_response_coordinates(response_mask), values)


def token_budget_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows grouped into as few micro-batches of at most `budget` tokens as first-fit decreasing
    finds (verl's use_dynamic_bsz); each group lists row indices in ascending order. A row longer
    than the budget is an error (raise the budget to at least prompt + response length)."""
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    longest = max(lengths, default=0)
    if longest > budget:
        raise ValueError(f"a row of {longest} tokens does not fit the micro-batch token budget of {budget}")
    groups: list[list[int]] = []
    loads: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: (-lengths[r], r)):
        for k, load in enumerate(loads):
            if load + lengths[row] <= budget:
                groups[k].append(row)
                loads[k] += lengths[row]
                break
        else:
            groups.append([row])
            loads.append(lengths[row])
    return [sorted(group) for group in groups]


def split_to_count(groups: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """`groups` made exactly `count` (no fewer than they are): the group with the most tokens split
    in two balanced halves (longest row first, each to the lighter half) until there are enough."""
    if not len(groups) <= count <= len(lengths):
        raise ValueError(f"{len(lengths)} rows cannot make {count} micro-batches (first-fit makes {len(groups)})")
    groups = list(groups)
    while len(groups) < count:
        fullest = max((g for g in groups if len(g) > 1), key=lambda g: sum(lengths[r] for r in g))
        groups.remove(fullest)
        halves: list[list[int]] = [[], []]
        for row in sorted(fullest, key=lambda r: -lengths[r]):
            halves[min((0, 1), key=lambda h: sum(lengths[r] for r in halves[h]))].append(row)
        groups += [sorted(half) for half in halves]
    return groups


def row_tokens(rows: Batch) -> list[int]:
    """Real tokens (prompt + response) per row."""
    return rows.tensors["attention_mask"].sum(dim=1).tolist()


def micro_batch_groups(rows: Batch, micro_rows: int, max_tokens: int | None, world_size: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch: consecutive `micro_rows`, or by token budget. By budget,
    every rank of `world_size` makes as many as the rank that needs the most (verl's
    same_micro_num_in_dp): FSDP gathers the parameters in each micro-batch's forward, so ranks that
    ran different numbers would wait in different collectives (on GPU, an NCCL hang)."""
    if max_tokens is None:
        return [list(range(i, min(i + micro_rows, len(rows)))) for i in range(0, len(rows), micro_rows)]
    lengths = row_tokens(rows)
    groups = token_budget_groups(lengths, max_tokens)
    if world_size > 1:
        count = torch.tensor([len(groups)], device=rows.tensors["attention_mask"].device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        groups = split_to_count(groups, lengths, int(count))
    return groups
