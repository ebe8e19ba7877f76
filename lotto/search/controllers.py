"""Controllers: what proposes the next networks. All see the same space (a list of decisions,
each with a number of options: `Space.axes()`), the same evaluation and the same sample budget.

    ctrl = make_controller("ppo", options=[3, 3, 2, ...], seed=0, settings=cfg.search)
    samples = ctrl.ask(n, step)        # n lists of option indices, one index per decision
    ctrl.tell(samples, outcomes)       # Outcome(reward, accuracy, latency_ms, ok) per sample
    meta, tensors = ctrl.state()       # JSON-able dict and CPU tensors: saved after every batch
    ctrl.load(meta, tensors)           # ... and loaded by a resumed run

`ask` draws from a random stream seeded by (seed, step), so a run resumed after batch k asks
exactly what an uninterrupted run would have asked.

- ppo: MnasNet's controller. An LSTM emits the decisions one after another (each step's input is
  the embedding of the previous choice; one softmax head per decision). After each batch, PPO's
  clipped surrogate (a few epochs over the batch) with advantage = reward - an exponential moving
  average of past rewards (the baseline).
- reinforce: the same policy, one plain policy-gradient step per batch with the same baseline.
- evolution: regularised evolution (Real et al. 2019): a population of the `population` most
  recent samples; a child mutates one decision of the best of `tournament` random members; the
  oldest member dies (aging), not the worst. Random samples until the population is full. Given
  the space's `canonical` map, a mutation that builds the parent's network again (e.g. an
  expansion ratio of a ds block) is drawn again: every child is a different network.
- random: uniform over the options of every decision.
- tpe / nsga2: optuna samplers through ask-and-tell (optional extra `lotto[search]`); the study
  is rebuilt each batch from the told trials (the saved state), sampler seeded by (seed, step).
  nsga2 optimises two objectives, accuracy (max) and latency (min); tpe the reward.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lotto.errors import LottoError

CONTROLLERS = ("ppo", "reinforce", "evolution", "random", "tpe", "nsga2")
OPTUNA_CONTROLLERS = ("tpe", "nsga2")
MUTATION_DRAWS = 32  # random single-decision mutations tried before a systematic scan
Canonical = Callable[[Sequence[int]], list[int]]  # `Space.canonical`: same network, same value


@dataclass(frozen=True)
class Outcome:
    reward: float
    accuracy: float
    latency_ms: float
    ok: bool = True


def stream(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63)


class Controller:
    name = "controller"

    def __init__(self, options: Sequence[int], seed: int, settings: Mapping[str, Any]):
        if not options:
            raise LottoError("the search space has no decision to make (every axis has one "
                             "option)")
        self.options, self.seed, self.settings = list(options), int(seed), settings

    def ask(self, n: int, step: int) -> list[list[int]]:
        raise NotImplementedError

    def tell(self, samples: Sequence[Sequence[int]], outcomes: Sequence[Outcome]) -> None:
        """Learn from a batch (default: nothing)."""

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore `state()` (default: nothing to restore)."""

    def uniform(self, rng: random.Random) -> list[int]:
        return [rng.randrange(n) for n in self.options]


class RandomSearch(Controller):
    name = "random"

    def ask(self, n: int, step: int) -> list[list[int]]:
        rng = random.Random(stream(self.seed, step))
        return [self.uniform(rng) for _ in range(n)]


class Evolution(Controller):
    """Regularised evolution with aging; `population` and `tournament` from the settings."""

    name = "evolution"

    def __init__(self, options: Sequence[int], seed: int, settings: Mapping[str, Any],
                 canonical: Canonical | None = None):
        super().__init__(options, seed, settings)
        self.canonical = canonical
        self.size = int(settings.get("population", 8))
        self.tournament = int(settings.get("tournament", 3))
        if self.size < 2 or not 1 <= self.tournament <= self.size:
            raise LottoError("config key search.evolution: population must be >= 2 and "
                             "tournament in 1..population")
        self.population: list[tuple[list[int], float]] = []  # oldest first

    def ask(self, n: int, step: int) -> list[list[int]]:
        rng = random.Random(stream(self.seed, step))
        out = []
        for _ in range(n):
            if len(self.population) < self.size:
                out.append(self.uniform(rng))
                continue
            contenders = rng.sample(self.population, self.tournament)
            parent = max(contenders, key=lambda m: m[1])[0]
            out.append(self.mutate(parent, rng))
        return out

    def mutate(self, parent: Sequence[int], rng: random.Random) -> list[int]:
        """The parent with one decision changed so that the network changes: random draws,
        then every single change in random order; a uniform draw if none changes it."""
        def key(ix: Sequence[int]) -> list[int]:
            return self.canonical(ix) if self.canonical is not None else list(ix)

        own = key(parent)
        axes = [i for i, k in enumerate(self.options) if k > 1]
        for _ in range(MUTATION_DRAWS):
            child = list(parent)
            i = rng.choice(axes)
            child[i] = rng.choice([v for v in range(self.options[i]) if v != parent[i]])
            if key(child) != own:
                return child
        moves = [(i, v) for i in axes for v in range(self.options[i]) if v != parent[i]]
        rng.shuffle(moves)
        for i, v in moves:
            child = list(parent)
            child[i] = v
            if key(child) != own:
                return child
        return self.uniform(rng)

    def tell(self, samples: Sequence[Sequence[int]], outcomes: Sequence[Outcome]) -> None:
        for s, o in zip(samples, outcomes):
            self.population.append((list(s), float(o.reward)))
        del self.population[: max(0, len(self.population) - self.size)]  # the oldest die

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"population": [[s, r] for s, r in self.population]}, {}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.population = [(list(s), float(r)) for s, r in meta.get("population", [])]


class Policy(nn.Module):
    """An LSTM that emits one categorical decision per step (NASNet/MnasNet controller)."""

    def __init__(self, options: Sequence[int], hidden: int = 64):
        super().__init__()
        self.options = list(options)
        self.offsets = [0]
        for n in self.options:
            self.offsets.append(self.offsets[-1] + n)
        self.embed = nn.Embedding(self.offsets[-1] + 1, hidden)  # last row: the start token
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.options)

    def forward(self, actions: torch.Tensor | None = None, n: int = 1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
        """Sample `n` sequences (actions None) or score given `actions` (batch x decisions).
        Returns (actions, log-probability per sequence, entropy per sequence)."""
        batch = n if actions is None else actions.shape[0]
        hidden = self.cell.hidden_size
        h = torch.zeros(batch, hidden)
        c = torch.zeros(batch, hidden)
        token = torch.full((batch,), self.offsets[-1], dtype=torch.long)
        chosen, logp, entropy = [], torch.zeros(batch), torch.zeros(batch)
        for i, head in enumerate(self.heads):
            h, c = self.cell(self.embed(token), (h, c))
            dist = torch.distributions.Categorical(logits=head(h))
            if actions is None:
                probs = dist.probs.detach()
                a = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                a = actions[:, i]
            chosen.append(a)
            logp = logp + dist.log_prob(a)
            entropy = entropy + dist.entropy()
            token = a + self.offsets[i]
        return torch.stack(chosen, 1), logp, entropy


class PolicyGradient(Controller):
    """PPO (clipped surrogate) or REINFORCE on the LSTM policy, moving-average baseline."""

    def __init__(self, options: Sequence[int], seed: int, settings: Mapping[str, Any],
                 ppo: bool = True):
        super().__init__(options, seed, settings)
        self.name = "ppo" if ppo else "reinforce"
        self.ppo = ppo
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream(seed, -1))
            self.policy = Policy(options, int(settings.get("hidden", 64)))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(settings.get("lr",
                                                                                         0.005)))
        self.baseline: float | None = None
        self.decay = float(settings.get("baseline_decay", 0.9))
        self.clip = float(settings.get("clip", 0.2))
        self.epochs = int(settings.get("epochs", 4)) if ppo else 1
        self.entropy = float(settings.get("entropy", 1e-3))
        self.updates = 0

    def ask(self, n: int, step: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(stream(self.seed, step))
        with torch.no_grad():
            actions, _, _ = self.policy(n=n, generator=gen)
        return actions.tolist()

    def tell(self, samples: Sequence[Sequence[int]], outcomes: Sequence[Outcome]) -> None:
        rewards = torch.tensor([o.reward for o in outcomes], dtype=torch.float32)
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        advantage = rewards - self.baseline
        actions = torch.tensor([list(s) for s in samples], dtype=torch.long)
        with torch.no_grad():
            _, old, _ = self.policy(actions)
        for _ in range(self.epochs):
            _, logp, entropy = self.policy(actions)
            if self.ppo:
                ratio = torch.exp(logp - old)
                clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
                surrogate = torch.minimum(ratio * advantage, clipped * advantage)
            else:
                surrogate = logp * advantage
            loss = -surrogate.mean() - self.entropy * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.baseline = self.decay * self.baseline + (1 - self.decay) * float(rewards.mean())
        self.updates += 1

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"policy.{k}": v.detach().clone() for k, v in self.policy.state_dict().items()}
        opt = self.optimizer.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"adam.{i}.{k}"] = v.detach().clone().reshape(-1) if k == "step" \
                    else v.detach().clone()
        return {"baseline": self.baseline, "updates": self.updates}, tensors

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.baseline = meta.get("baseline")
        self.updates = int(meta.get("updates", 0))
        self.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items()
                                     if k.startswith("policy.")})
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("adam."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
        opt["state"] = state
        self.optimizer.load_state_dict(opt)


class OptunaSearch(Controller):
    """TPE (reward) or NSGA-II (accuracy up, latency down) via optuna's ask-and-tell."""

    def __init__(self, options: Sequence[int], seed: int, settings: Mapping[str, Any],
                 kind: str = "tpe", names: Sequence[str] | None = None):
        super().__init__(options, seed, settings)
        self.optuna = import_optuna(kind)
        self.name = kind
        self.names = list(names) if names is not None else [f"d{i}" for i in range(len(options))]
        self.trials: list[dict[str, Any]] = []  # told: {"params": [...], "values": [...] | None}

    def _study(self, step: int) -> Any:
        optuna = self.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = stream(self.seed, step) % (2**32)
        if self.name == "tpe":
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=int(self.settings.get("startup", 8)))
            study = optuna.create_study(direction="maximize", sampler=sampler)
        else:
            sampler = optuna.samplers.NSGAIISampler(
                seed=seed, population_size=int(self.settings.get("population", 8)))
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        dists = self._distributions()
        frozen = []
        for t in self.trials:
            params = {name: v for name, v in zip(self.names, t["params"])}
            if t["values"] is None:
                state = optuna.trial.TrialState.FAIL
                frozen.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                        state=state))
            else:
                frozen.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                        values=t["values"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.add_trials(frozen)
        return study

    def _distributions(self) -> dict[str, Any]:
        cat = self.optuna.distributions.CategoricalDistribution
        return {name: cat(list(range(n))) for name, n in zip(self.names, self.options)}

    def ask(self, n: int, step: int) -> list[list[int]]:
        study = self._study(step)
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(n):
                trial = study.ask(self._distributions())
                out.append([int(trial.params[name]) for name in self.names])
        return out

    def tell(self, samples: Sequence[Sequence[int]], outcomes: Sequence[Outcome]) -> None:
        for s, o in zip(samples, outcomes):
            if not o.ok or not math.isfinite(o.latency_ms):
                values = None if self.name == "nsga2" else [0.0]
            elif self.name == "nsga2":
                values = [float(o.accuracy), float(o.latency_ms)]
            else:
                values = [float(o.reward)]
            self.trials.append({"params": [int(v) for v in s], "values": values})

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"trials": self.trials, "names": self.names}, {}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.trials = list(meta.get("trials", []))


def import_optuna(kind: str) -> Any:
    try:
        import optuna
    except ImportError:
        raise LottoError(f"controller {kind} needs optuna: pip install 'lotto[search]' "
                         "(or pick ppo, reinforce, evolution or random)") from None
    return optuna


def make_controller(kind: str, options: Sequence[int], seed: int,
                    settings: Mapping[str, Any], names: Sequence[str] | None = None,
                    canonical: Canonical | None = None) -> Controller:
    """The controller `kind`, with its section of the settings (search.<kind>). `canonical`
    (the space's `Space.canonical`) tells evolution which decisions build the same network."""
    own = settings.get(kind, {}) or {} if hasattr(settings, "get") else {}
    if kind == "ppo":
        return PolicyGradient(options, seed, own, ppo=True)
    if kind == "reinforce":
        return PolicyGradient(options, seed, settings.get("ppo", {}) or {}, ppo=False)
    if kind == "evolution":
        return Evolution(options, seed, own, canonical)
    if kind == "random":
        return RandomSearch(options, seed, own)
    if kind in OPTUNA_CONTROLLERS:
        return OptunaSearch(options, seed, own, kind, names)
    raise LottoError(f"unknown controller {kind!r}; choose one of {', '.join(CONTROLLERS)}")
