"""The methods this trainer runs, in one registry: what each one rewards with and what it needs.

`reward_model.reward_manager` names a method, by its name or one of its aliases (the release's
names among them). A method of your own needs no edit here: `custom_reward_function.path` /
`.name` (verl's keys) load a reward function, a `Method` record or verl's per-response
`compute_score` from your file, or call `register_method` (docs/custom-method.md). The trainer
reads everything else from the record:

- `votes`: the reward takes a majority vote (`reward_model.vote_equivalence` applies);
- `paired`: every question comes with its rephrased twin, both views are rolled out and trained on,
  and a vote on one view labels the other;
- `teacher`: the reference model is an EMA teacher whose rollouts give the pseudo-label;

together the method's roles: whose rollouts vote, on which view, for which views (`corewarding.roles`,
where the table of the built-in methods is);
- `token_stats`: per-token statistics of the policy the reward reads, computed before the update;
- `ground_truth`: the reward reads the data's ground truth (rows without one are refused).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch

from corewarding.batch import Batch
from corewarding.errors import ConfigError
from corewarding.rewards import controls
from corewarding.rewards import functions as rewards
from corewarding.rewards.common import RewardFn, RewardOutput
from corewarding.rewards.verl_score import VerlScore, is_verl_shaped
from corewarding.roles import Roles, roles_of

__all__ = ["METHODS", "Method", "UnknownMethod", "check_method", "load_method", "register_method", "resolve_method"]

TOKEN_STATS = ("entropy", "self_certainty")


class UnknownMethod(ConfigError):
    """A name that is no method's name or alias."""


@dataclass(frozen=True)
class Method:
    name: str
    reward: RewardFn
    votes: bool = False
    paired: bool = False
    teacher: bool = False
    token_stats: tuple[str, ...] = ()  # "entropy" and / or "self_certainty"
    ground_truth: bool = False
    aliases: tuple[str, ...] = ()

    def roles(self, use_aug: bool = False) -> Roles:
        """Whose rollouts vote, on which view, for which views (`corewarding.roles`); `use_aug` is
        `data.use_aug`."""
        return roles_of(self.votes, self.paired, self.teacher, use_aug)

    def reward_fn(self, **options: Any) -> RewardFn:
        """The reward function with `options` bound (e.g. equivalence="math", gt_scorer=...)."""
        return partial(self.reward, **options) if options else self.reward

    def options(self, gt_scorer: str, equivalence: str, reward_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments the trainer calls the reward with: `gt_scorer` always, `equivalence`
        when the method votes, and `reward_model.reward_kwargs`."""
        return {"gt_scorer": gt_scorer, **({"equivalence": equivalence} if self.votes else {}), **reward_kwargs}


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("gt", rewards.gt, ground_truth=True, aliases=("naive", "ground_truth")),
    Method("majority_voting", rewards.majority_voting, votes=True, aliases=("majority", "ttrl")),
    Method("self_certainty", rewards.self_certainty, token_stats=("self_certainty",), aliases=("intuitor",)),
    Method("entropy", rewards.entropy, token_stats=("entropy",)),
    Method("co_rewarding_i", rewards.co_rewarding_i, votes=True, paired=True, aliases=("co_reward", "corewarding_i")),
    Method("co_rewarding_ii", rewards.co_rewarding_ii, votes=True, teacher=True, aliases=("corewarding_ii",)),
    Method("co_rewarding_iii", rewards.co_rewarding_iii, votes=True, paired=True, teacher=True,
           aliases=("corewarding_iii",)),
    # the controls of Spurious Rewards and the EMPO baseline (corewarding.rewards.controls)
    Method("random", controls.random_reward, aliases=("random_reward",)),
    Method("format", controls.format_reward, aliases=("format_reward",)),
    Method("incorrect", controls.incorrect, ground_truth=True, aliases=("incorrect_label",)),
    Method("empo", controls.empo, votes=True),
)}

BUILTIN = frozenset(METHODS)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


_BY_NAME = {_key(alias): method for method in METHODS.values() for alias in (method.name, *method.aliases)}


def resolve_method(name: str) -> Method:
    """The method called `name` (case and `-` / `_` do not matter; release names accepted)."""
    key = _key(name)
    if key not in _BY_NAME:
        custom = "".join(f" | {n}" for n in METHODS if n not in BUILTIN)
        raise UnknownMethod(
            f"reward_model.reward_manager={name!r} is unknown; choose one of "
            f"naive (gt) | majority_voting | self_certainty | entropy | co_reward (co_rewarding_I) | co_rewarding_II | "
            f"co_rewarding_III | random | format | incorrect | empo{custom}"
            " (or load your own with custom_reward_function.path)"
        )
    return _BY_NAME[key]


def check_method(method: Method, reward_kwargs: Mapping[str, Any] | None = None) -> None:
    """The contract of a method, a one-line `ConfigError` when it is broken: a name, known token
    statistics, and a reward callable as ``reward(batch, teacher=None, **options)`` with the options
    the trainer passes (`Method.options`: `gt_scorer`, `equivalence` when it votes, `reward_kwargs`)."""
    if not isinstance(method, Method):
        raise ConfigError(f"{method!r} is not a corewarding.methods.Method")
    who = f"method {method.name!r}"
    if not method.name or not isinstance(method.name, str):
        raise ConfigError(f"{who}: a method needs a non-empty name")
    unknown = [s for s in method.token_stats if s not in TOKEN_STATS]
    if unknown:
        raise ConfigError(f"{who}: token_stats {unknown} unknown; choose from {TOKEN_STATS}")
    if not callable(method.reward):
        raise ConfigError(f"{who}: its reward {method.reward!r} is not callable")
    options = method.options("math_verify", "string", reward_kwargs or {})
    try:
        inspect.signature(method.reward).bind(Batch(), teacher=None, **options)
    except TypeError as exc:
        raise ConfigError(f"{who}: its reward {_describe(method.reward)} cannot be called as reward(batch, teacher=None, "
                          f"{', '.join(f'{k}=...' for k in options)}): {exc}") from None
    except ValueError:  # a builtin without a signature: the trial call will tell
        pass


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


def register_method(method: Method) -> Method:
    """Add `method` to the registry under its name and aliases, after `check_method`; a name that
    another method holds is refused (registering the same record again is allowed)."""
    check_method(method)
    for alias in (method.name, *method.aliases):
        holder = _BY_NAME.get(_key(alias))
        replaces_itself = holder is not None and holder.name == method.name and holder.name not in BUILTIN
        if holder is not None and holder is not method and not replaces_itself:  # a file loaded again replaces itself
            raise ConfigError(f"method name {alias!r} is taken by method {holder.name!r}: give yours another name")
    METHODS[method.name] = method
    for alias in (method.name, *method.aliases):
        _BY_NAME[_key(alias)] = method
    return method


def load_method(path: str | Path, name: str) -> Method:
    """The method `name` of the Python file `path` (verl's `custom_reward_function.path` / `.name`),
    registered: a `Method` record, a reward function (it votes when it takes `equivalence`), or
    verl's ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``, called per
    rollout (`VerlScore`; a ground-truth reward). A file is read once per process."""
    return _load_method(str(Path(path).expanduser().resolve()), name)


@functools.lru_cache(maxsize=None)
def _load_method(path: str, name: str) -> Method:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"custom_reward_function.path={path}: no such file")
    spec = importlib.util.spec_from_file_location(f"corewarding_custom_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error of the user's file, in one line
        raise ConfigError(f"custom_reward_function.path={path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, name, None)
    if found is None:
        public = sorted(k for k, v in vars(module).items() if not k.startswith("_") and (callable(v) or isinstance(v, Method)))
        raise ConfigError(f"custom_reward_function.name={name!r}: {path} has no such function or Method (it has {public})")
    if isinstance(found, Method):
        return register_method(found)
    if not callable(found):
        raise ConfigError(f"custom_reward_function.name={name!r} in {path} is a {type(found).__name__}, "
                          "not a reward function or a Method")
    if is_verl_shaped(found):
        return register_method(Method(name, VerlScore(found, f"custom_reward_function {path}:{name}"), ground_truth=True))
    try:
        votes = "equivalence" in inspect.signature(found).parameters
    except (TypeError, ValueError):
        votes = False
    return register_method(Method(name, found, votes=votes))


def try_method(method: Method, options: Mapping[str, Any]) -> None:
    """Call the reward once on a made-up batch of two rollouts (and the batches its needs ask for)
    and check what it returns: scores [N] and rows `answer` / `pseudo_label`, one per rollout. verl's
    compute_score is called on one made-up rollout instead (`VerlScore.trial`)."""
    if isinstance(method.reward, VerlScore):
        method.reward.trial(**options)
        return
    texts, n = ["The answer is \\boxed{1}.", "The answer is \\boxed{2}."], 2
    rows: dict[str, list] = {"response_text": texts, "uid": ["q", "q"], "sample_index": [0, 1], "ground_truth": ["1", "1"],
                             "data_source": ["trial", "trial"], "index": [0, 0]}
    if method.paired:
        n = 4
        rows = {k: v * 2 for k, v in rows.items()} | {"pair_id": [0] * 4, "view": ["original"] * 2 + ["rephrased"] * 2,
                                                       "uid": ["q", "q", "r", "r"]}
    tensors = {stat: torch.full((n, 3), 0.5) for stat in method.token_stats}  # no draw from the run's RNG
    if tensors:
        tensors["response_mask"] = torch.ones(n, 3)
    teacher = None
    if method.teacher:
        teacher = Batch(rows={k: v[::-1] if k == "response_text" else v for k, v in rows.items()})
    who = f"method {method.name!r}"
    try:
        out = method.reward(Batch(tensors, rows), teacher=teacher, **options)
    except Exception as exc:  # noqa: BLE001 - the user's function, in one line
        raise ConfigError(f"{who}: its reward raised {type(exc).__name__}: {exc} on a test batch of {n} rollouts") from exc
    if not isinstance(out, RewardOutput):
        raise ConfigError(f"{who}: its reward returned {type(out).__name__}; return a corewarding.rewards.RewardOutput")
    if not isinstance(out.scores, torch.Tensor) or tuple(out.scores.shape) != (n,):
        raise ConfigError(f"{who}: RewardOutput.scores must be a tensor of shape [{n}] (one per rollout), "
                          f"got {getattr(out.scores, 'shape', type(out.scores).__name__)}")
    for key in ("answer", "pseudo_label"):
        if len(out.rows.get(key, ())) != n:
            raise ConfigError(f"{who}: RewardOutput.rows[{key!r}] must hold one value per rollout ({n}); "
                              f"it has {len(out.rows[key]) if key in out.rows else 'none'} (None where there is none)")
