"""The outer loop on Optuna: ask an architecture, score it, tell the result; a study in SQLite resumes.

Strategies are Optuna samplers with the hard budget built in (a candidate over the budget is never proposed,
so every evaluation is spent on a feasible architecture):

- ``evolution``: regularized evolution (Real et al. 2019; the search Once-for-All runs on its supernet): the
  population is the last ``population`` evaluated trials (the oldest ages out); a parent is the best of
  ``sample_size`` drawn from it, and a child changes one choice of one layer;
- ``random``: uniform architectures under the budget, the baseline NAS papers must beat.

Every proposal draws from a generator seeded by ``(seed, trial number)`` and depends only on the trials told
before it, so a killed study resumed from its file proposes exactly what an uninterrupted one would.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from mixconv.files.config import ConfigError
from mixconv.models.space import Arch, LayerChoice, SearchSpace

STRATEGIES = ("evolution", "random")
MAX_TRIES = 20000
MAX_NEW_TRIES = 200  # mutations tried for a child not evaluated before


class SearchError(ConfigError):
    """A search that cannot run as asked (an impossible budget, a study that does not match)."""


def param_name(i: int, option: str) -> str:
    return f"l{i:02d}.{option}"


def arch_params(arch: Arch, space: SearchSpace) -> dict[str, Any]:
    return {param_name(i, k): getattr(c, k) for i, (slot, c) in enumerate(zip(space.layers, arch))
            for k in slot.options()}


def params_arch(params: dict[str, Any], space: SearchSpace) -> Arch:
    return tuple(LayerChoice(**{k: params[param_name(i, k)] for k in slot.options()})
                 for i, slot in enumerate(space.layers))


def _mutate(arch: Arch, space: SearchSpace, rng: random.Random) -> Arch:
    """A copy of ``arch`` with one choice of one layer changed to another value."""
    movable = [(i, k) for i, slot in enumerate(space.layers) for k, v in slot.options().items() if len(v) > 1]
    if not movable:
        return arch
    i, k = rng.choice(movable)
    values = [v for v in space.layers[i].options()[k] if v != getattr(arch[i], k)]
    child = list(arch)
    child[i] = LayerChoice(**{**arch[i].__dict__, k: rng.choice(values)})
    return tuple(child)


def _sampler_class():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    class BudgetedSampler(optuna.samplers.BaseSampler):
        """Regularized evolution or random search over ``space``, proposing only ``feasible`` architectures."""

        def __init__(self, space: SearchSpace, strategy: str, seed: int, feasible: Callable[[Arch], bool],
                     population: int = 16, sample_size: int = 4) -> None:
            self.space, self.strategy, self.seed = space, strategy, seed
            self.feasible, self.population, self.sample_size = feasible, population, sample_size

        def infer_relative_search_space(self, study, trial):
            return {param_name(i, k): CategoricalDistribution(list(v))
                    for i, slot in enumerate(self.space.layers) for k, v in slot.options().items()}

        def _random(self, rng: random.Random) -> Arch:
            for _ in range(MAX_TRIES):
                arch = self.space.sample(rng)
                if self.feasible(arch):
                    return arch
            raise SearchError(f"no architecture under the budget in {MAX_TRIES} random draws; raise the budget")

        def sample_relative(self, study, trial, search_space):
            if not search_space:
                return {}
            rng = random.Random(self.seed * 1_000_003 + trial.number)
            done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.number < trial.number]
            done.sort(key=lambda t: t.number)
            if self.strategy == "random" or len(done) < self.population:
                return arch_params(self._random(rng), self.space)
            pop = done[-self.population:]
            contenders = rng.sample(pop, min(self.sample_size, len(pop)))
            # ties go to the youngest: neutral drift across plateaus
            parent = params_arch(max(contenders, key=lambda t: (t.value, t.number)).params, self.space)
            seen = {tuple(sorted(t.params.items())) for t in done}
            fallback = None
            for _ in range(MAX_TRIES):
                child = _mutate(parent, self.space, rng)
                if self.feasible(child):
                    params = arch_params(child, self.space)
                    if tuple(sorted(params.items())) not in seen:  # spend the evaluation on something new
                        return params
                    fallback = fallback or params
                    if _ >= MAX_NEW_TRIES:
                        return fallback
            return arch_params(self._random(rng), self.space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            raise SearchError(f"{param_name}: every parameter is sampled jointly; the space changed under the study")

    return BudgetedSampler


@dataclass(frozen=True)
class Evaluated:
    """One told trial."""

    number: int
    arch: Arch
    score: float
    predicted: float


def run_study(space: SearchSpace, score: Callable[[Arch], float], predict: Callable[[Arch], float], budget: float,
              *, strategy: str = "evolution", evaluations: int = 64, seed: int = 0, storage: Optional[str] = None,
              study_name: str = "search", population: int = 16, sample_size: int = 4,
              progress: Optional[Callable[[int, int], None]] = None) -> list[Evaluated]:
    """Evaluate ``evaluations`` architectures under ``predict(arch) <= budget``; returns them in trial order.

    ``storage`` (an Optuna storage URL, e.g. ``sqlite:///runs/search/study.db``) makes the study resumable:
    a later call with the same name goes on from the last told trial, re-scoring a trial that was running
    when the process died.
    """
    import optuna
    from optuna.trial import TrialState

    if strategy not in STRATEGIES:
        raise SearchError(f"--strategy: got {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _sampler_class()(space, strategy, seed, lambda a: predict(a) <= budget, population, sample_size)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", sampler=sampler,
                                load_if_exists=True)
    attrs = study.user_attrs
    settings = {"strategy": strategy, "seed": seed, "budget": budget, "space": space.name,
                "layers": len(space.layers)}
    if attrs.get("settings") not in (None, settings):
        raise SearchError(f"study {study_name!r} in {storage} was run with {attrs['settings']}, not {settings}; "
                          "choose another --output or the same settings")
    study.set_user_attr("settings", settings)
    dists = sampler.infer_relative_search_space(study, None)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # interrupted: score it again
        if set(t.params) == set(dists):
            arch = params_arch(t.params, space)
            study.tell(t.number, score(arch))
        else:
            study.tell(t.number, state=TrialState.FAIL)
    while (done := len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))) < evaluations:
        if progress is not None:
            progress(done, evaluations)
        trial = study.ask()
        params = {name: trial.suggest_categorical(name, d.choices) for name, d in dists.items()}
        arch = params_arch(params, space)
        trial.set_user_attr("predicted", predict(arch))
        study.tell(trial, score(arch))
    if progress is not None:
        progress(evaluations, evaluations)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[:evaluations]:
        arch = params_arch(t.params, space)
        out.append(Evaluated(t.number, arch, float(t.value), float(t.user_attrs.get("predicted", predict(arch)))))
    return out
