"""The tokenizer and the chat template, one way for training, validation, evaluation and rewriting."""

from __future__ import annotations

from typing import Any

from corewarding.data.schema import DataError

__all__ = ["chat_prompt_ids", "load_tokenizer", "pad_token_id"]


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The model folder's tokenizer; one without a pad token pads with its EOS token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise DataError(f"{path}: cannot load its tokenizer ({exc})".replace("\n", " ")) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pad_token_id(tokenizer: Any) -> int:
    """The pad token id, or the EOS id for a tokenizer without a pad token."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has neither a pad nor an EOS token")
    return int(pad)


def chat_prompt_ids(tokenizer: Any, conversations: list[list[dict[str, str]]], **template_kwargs: Any) -> list[list[int]]:
    """The token ids of each conversation's generation prompt, exactly as the chat template writes
    them (no special tokens added on top). A tokenizer without a chat template is an error rather
    than a guess, so that every part of the project tokenizes a question the same way."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False, **template_kwargs)
             for c in conversations]
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
