"""HFRolloutEngine on the tiny random model: n expansion order, stop tokens, left padding, weight loads,
and none of the model's own generation settings in its sampling."""

from __future__ import annotations

import pytest
import torch

from corewarding.config.actor_rollout_ref import ValKwargs
from corewarding.workers.rollout import EngineSettings, make_engine
from corewarding.workers.rollout.base import SamplingSettings, validation_sampling
from corewarding.workers.rollout.hf_engine import HFRolloutEngine


@pytest.fixture(scope="module")
def parts(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    engine = HFRolloutEngine(model, tokenizer.pad_token_id, [tokenizer.eos_token_id], micro_batch_size=4)
    return engine, tokenizer


GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=6)


def test_n_expansion_is_prompt_major(parts):
    engine, tok = parts
    prompts = [tok.encode("one two"), tok.encode("the quick brown fox")]
    out = engine.generate(prompts, SamplingSettings(n=3, temperature=0.0, max_new_tokens=5))
    assert len(out) == 6
    alone = [engine.generate([p], GREEDY)[0].token_ids[:5] for p in prompts]
    assert [o.token_ids for o in out] == [alone[0]] * 3 + [alone[1]] * 3


@pytest.mark.parametrize(
    "val_kwargs, expected",
    [
        # the release: greedy, one response per prompt
        ({"n": 1, "temperature": 0, "top_p": 1.0, "top_k": -1, "do_sample": False}, (1, 0.0, 1.0, -1)),
        # do_sample=False ignores the other knobs; n greedy copies (verl repeats the prompts n times)
        ({"n": 3, "temperature": 0.8, "top_p": 0.5, "top_k": 5, "do_sample": False}, (3, 0.0, 1.0, -1)),
        # ours: sampled at 0.8
        ({"n": 1, "temperature": 0.8, "top_p": 1.0, "top_k": -1, "do_sample": True}, (1, 0.8, 1.0, -1)),
        ({"n": 4, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "do_sample": True}, (4, 0.6, 0.9, 20)),
        # sampling at temperature 0 is greedy, as vLLM reads it
        ({"n": 2, "temperature": 0, "top_p": 1.0, "top_k": -1, "do_sample": True}, (2, 0.0, 1.0, -1)),
    ],
)
def test_validation_sampling_reads_val_kwargs_as_verl(val_kwargs, expected):
    settings = validation_sampling(ValKwargs(**val_kwargs), max_new_tokens=7, stop_token_ids=(2,))
    assert (settings.n, settings.temperature, settings.top_p, settings.top_k) == expected
    assert settings.greedy == (expected[1] == 0.0)
    assert settings.max_new_tokens == 7 and settings.stop_token_ids == (2,)


def test_sampling_is_seeded_and_varied(parts):
    engine, tok = parts
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=5, seed=3)
    a = engine.generate([tok.encode("hello")], sampling)
    b = engine.generate([tok.encode("hello")], sampling)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert len({tuple(o.token_ids) for o in a}) > 1  # n samples, not n copies


def test_stop_token_cuts_and_is_kept(parts):
    engine, tok = parts
    prompt = tok.encode("count with me")
    full = engine.generate([prompt], GREEDY)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 6
    stop = full.token_ids[2]
    first = full.token_ids.index(stop)
    cut = engine.generate([prompt], SamplingSettings(n=1, temperature=0.0, max_new_tokens=6, stop_token_ids=(stop,)))[0]
    assert cut.token_ids == full.token_ids[: first + 1] and cut.finish_reason == "stop"


def test_left_padding_does_not_change_greedy_output(parts):
    engine, tok = parts
    short, long = tok.encode("hi"), tok.encode("a much longer prompt than the other one")
    batched = engine.generate([short, long], GREEDY)
    assert batched[0].token_ids == engine.generate([short], GREEDY)[0].token_ids
    assert batched[1].token_ids == engine.generate([long], GREEDY)[0].token_ids


def test_load_weights_changes_output_and_back(parts):
    engine, tok = parts
    prompt = [tok.encode("the answer is")]
    before = engine.generate(prompt, GREEDY)[0].token_ids
    original = {k: v.clone() for k, v in engine.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    engine.load_weights((k, v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in original.items())
    assert engine.generate(prompt, GREEDY)[0].token_ids != before
    engine.load_weights([*original.items(), ("lm_head.weight", original["model.embed_tokens.weight"])])  # tied: skipped
    assert engine.generate(prompt, GREEDY)[0].token_ids == before
    with pytest.raises(KeyError):
        engine.load_weights([("no.such.weight", torch.zeros(1))])


def test_generation_config_is_explicit(parts):
    engine, _ = parts
    cfg = engine._generation_config(SamplingSettings(temperature=1.0, top_k=-1), [2])
    assert cfg.do_sample and cfg.top_k == 0 and cfg.top_p == 1.0 and cfg.repetition_penalty == 1.0


def test_factory_builds_hf_and_rejects_unknown(tiny_model_path, parts):
    _, tok = parts
    engine = make_engine(EngineSettings(name="hf", max_model_len=12, hf_micro_batch_size=2), str(tiny_model_path), tok, "cpu")
    assert isinstance(engine, HFRolloutEngine) and engine.micro_batch_size == 2
    assert tok.eos_token_id in engine.eos_token_ids
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'"):
        make_engine(EngineSettings(name="sglang", max_model_len=12), str(tiny_model_path), tok, "cpu")


def test_the_models_own_generation_settings_do_not_reach_sampling(tiny_model_path):
    """A model whose generation_config.json suppresses a token or sets min_p (transformers' generate
    would fill both in): greedy still takes the plain argmax, and sampling still varies (min_p 0.99
    would leave only the argmax of this near-uniform tiny model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    prompt = tokenizer.encode("the quick brown fox")
    with torch.no_grad():
        argmax = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    model.generation_config.suppress_tokens = [argmax]
    model.generation_config.min_p = 0.99
    engine = HFRolloutEngine(model, tokenizer.pad_token_id, [tokenizer.eos_token_id])
    assert engine.generate([prompt], SamplingSettings(n=1, temperature=0.0, max_new_tokens=1))[0].token_ids == [argmax]
    sampled = engine.generate([prompt], SamplingSettings(n=8, temperature=1.0, max_new_tokens=1, seed=3))
    assert len({tuple(o.token_ids) for o in sampled}) > 1
