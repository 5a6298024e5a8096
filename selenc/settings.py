"""The shape of the study's parameters: one frozen pydantic section per part of `params.yaml`.

Types, ranges and the protocol's fixed vocabularies (datasets, modalities, threat models, mask sources, ties,
victims) are checked here, field by field. The open registries are declared by the code that implements them:
significance metrics and attacks (`significance.METRICS`, `attacks.MODALITY`), and the models, whose entries name a
builder (`models.<name>.builder`, any importable callable) and whose names key the sweep and frontier grids. Their
names are plain strings here and `config` checks them (importing and probing each builder) when it loads a params
file. Everything below `config` in the layers
imports its sections from this module; `config.load_params` is the only way a params file becomes a `Params`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# --- the protocol's vocabularies, and the modality of each dataset --------------------------------------------------
MODALITIES: tuple[str, ...] = ("image", "text")
DATASET_MODALITY: dict[str, str] = {"mnist": "image", "cifar10": "image", "rotten_tomatoes": "text"}
THREAT_MODELS: tuple[str, ...] = ("mask_aware", "zero_fill")
MASK_SOURCES: tuple[str, ...] = ("own", "shared")
TIES: tuple[str, ...] = ("index", "decoys")  # how a budget past the scored coordinates is filled (`selection`)
VICTIMS: tuple[str, ...] = ("untrained", "trained")  # the seeded init, or that init after `models.<name>.pretrain`
MAX_BATCH = 64  # samples per client batch; a dataset's target pool may allow fewer (`config` names the limit)
MAX_ROUNDS = 64  # rounds of a federated run whose messages one attacker combines
# how a client's mask changes across rounds (`rounds.round_masks`): each round's own top-k | the first round's |
# the union of the masks so far | the top-k of the sum of the round's clients' scores
MASK_POLICIES: tuple[str, ...] = ("fresh", "frozen", "union", "consensus")
# the policies whose round 0 is the one-round message of the same client (its own top-k): a server that keeps the
# rounds holds that message too, so the rounds' strongest attacker includes the one-round attack (`stats.rounds_rows`)
FIRST_ROUND_IS_ONE_ROUND = frozenset({"fresh", "frozen", "union"})
# SEAL's largest modulus chain (total bits) per ring dimension at 128-bit security (seal::CoeffModulus::MaxBitCount)
SEAL_MAX_BITS: dict[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
# a dask scheduler address: tcp://host:port, tls://host:port, host:port (IPv6 hosts in brackets), or inproc://...
DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|inproc://\S+")

Dataset = Literal[tuple(DATASET_MODALITY)]
Metric = str  # a name of `significance.METRICS`, checked by `config`
Attack = str  # a name of `attacks.MODALITY`, checked by `config`
ThreatModel = Literal[THREAT_MODELS]
MaskSource = Literal[MASK_SOURCES]
Ties = Literal[TIES]
VictimState = Literal[VICTIMS]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0.0)]


class ConfigError(ValueError):
    """Invalid parameters: the message names the key path, the bad value and what is allowed."""


class Section(BaseModel):
    """Base of every params section: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key '{key}'; allowed keys: {allowed}",
                    {"key": unknown[0], "allowed": ", ".join(cls.model_fields)},
                )
        return data


def _unique(values: list) -> list:
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"duplicate entries {dupes}; each value may appear once")
    return values


def unique_list(item: Any) -> Any:
    """The type of a non-empty list of distinct `item`s (a sweep axis)."""
    return Annotated[list[item], Field(min_length=1), AfterValidator(_unique)]


def _dask_address(value: str | None) -> str | None:
    if value is not None and not DASK_ADDRESS.fullmatch(value):
        raise ValueError(
            "not a dask scheduler address; allowed: tcp://host:port, tls://host:port, host:port or inproc://..., "
            "or null to start a LocalCluster"
        )
    return value


def _reachable(minimum: float, why: str) -> AfterValidator:
    """A privacy bound that some reconstruction can meet: below `minimum` it would never be met."""

    def check(value: float) -> float:
        if value < minimum:
            raise ValueError(f"can never be met: {why}; allowed: >= {minimum:g}")
        return value

    return AfterValidator(check)


# --- sections ----------------------------------------------------------------------------------------------------
class Study(Section):
    seed: Annotated[int, Field(ge=0)]
    model_seeds: PosInt  # model initialisations every grid runs on; a sample is (initialisation, target)
    device: Literal["auto", "cpu", "cuda"]


class Pretrain(Section):
    epochs: Annotated[int, Field(ge=0)]
    samples: PosInt
    batch_size: PosInt
    lr: PosFloat


class ModelEntry(Section):
    """One victim model: what builds it, on which data, and how the client runs it. Keys beyond these are the
    builder's keyword arguments (`config` checks them against its signature and fills in its defaults)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    builder: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]  # "package.module:function"
    source: str  # the file the builder's module is (a dependency of the model's stages in dvc.yaml)
    modality: Literal[MODALITIES]
    dataset: Dataset
    tokenizer: str | None = None  # text: a tokenizer source of `models.TOKENIZERS`
    max_length: Annotated[int, Field(ge=4, le=512)] | None = None  # text: tokens per sentence, specials included
    mode: Literal["eval", "train"] = "eval"  # the client's forward: eval (running statistics, no dropout) | train
    pretrain: Pretrain

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        return data  # the builder's signature names the other keys (`config`)

    @model_validator(mode="after")
    def _modality_fits(self) -> ModelEntry:
        if DATASET_MODALITY[self.dataset] != self.modality:
            allowed = [d for d, m in DATASET_MODALITY.items() if m == self.modality]
            raise PydanticCustomError(
                "modality",
                "dataset '{d}' is not {m} data; allowed for modality {m}: {allowed}",
                {"d": self.dataset, "m": self.modality, "allowed": ", ".join(allowed)},
            )
        text_keys = {"tokenizer": self.tokenizer, "max_length": self.max_length}
        for key, value in text_keys.items():
            if (value is None) == (self.modality == "text"):
                need = "a text model needs" if self.modality == "text" else "an image model takes no"
                raise PydanticCustomError("modality", "{key}: {need} {key}", {"key": key, "need": need})
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The builder's keyword arguments: every key beyond the entry's own."""
        return dict(self.model_extra or {})


class Models(Section):
    """The victim models by name (`models.<name>`): each name keys its sweep and frontier grids."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    __pydantic_extra__: dict[str, ModelEntry] = Field(init=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data:
            raise PydanticCustomError("empty", "no model; allowed: one entry or more (models.<name>: ...)")
        return data

    def __getitem__(self, name: str) -> ModelEntry:
        return self.model_extra[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.model_extra)


UpdateKind = Literal["fedsgd", "fedavg"]
BatchSize = Annotated[int, Field(gt=0, le=MAX_BATCH)]
MaskPolicy = Literal[MASK_POLICIES]


class Update(Section):
    """How a client produces what the server sees: one message (`rounds` 1) or one per round of a federated run."""

    kind: UpdateKind
    batch_size: BatchSize
    local_steps: PosInt
    local_lr: PosFloat
    rounds: Annotated[int, Field(gt=0, le=MAX_ROUNDS)] = 1
    mask_policy: MaskPolicy = "fresh"
    clients: PosInt = 4  # clients aggregated per round (this one and clients − 1 others on disjoint data)
    server_lr: PosFloat = 1.0  # the global step on the mean update between rounds


class UpdateChange(Section):
    """An entry of a grid's `updates`: the `update` section with the keys given replaced (none: the section itself)."""

    kind: UpdateKind | None = None
    batch_size: BatchSize | None = None
    local_steps: PosInt | None = None
    local_lr: PosFloat | None = None
    rounds: Annotated[int, Field(gt=0, le=MAX_ROUNDS)] | None = None
    mask_policy: MaskPolicy | None = None
    clients: PosInt | None = None
    server_lr: PosFloat | None = None

    def over(self, base: Update) -> Update:
        """The update this entry names, `base` (the `update` section) supplying the keys it leaves out."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Significance(Section):
    samples: PosInt
    distance_q: Literal["far", "near", "path"]
    near_eps: PosFloat
    path_lr: PosFloat
    shared_clients: Annotated[int, Field(ge=2)]


class HE(Section):
    poly_modulus_degree: Literal[4096, 8192, 16384, 32768]
    coeff_mod_bit_sizes: Annotated[list[Annotated[int, Field(ge=20, le=60)]], Field(min_length=3)]
    scale_bits: Annotated[int, Field(ge=20, le=60)]
    max_ciphertexts: PosInt
    threads: PosInt

    @model_validator(mode="after")
    def _levels_fit(self) -> HE:
        inner = self.coeff_mod_bit_sizes[1:-1]
        if any(b != self.scale_bits for b in inner):
            raise PydanticCustomError(
                "he",
                "the inner coeff_mod_bit_sizes {inner} must equal scale_bits={s} (CKKS rescaling)",
                {"inner": inner, "s": self.scale_bits},
            )
        return self


def configurations(knobs: Section | None) -> int:
    """How many configurations an attack runs from each init: the product of its list-valued knobs' lengths (IG's
    `tv`, linear's `match`); 1 for an attack without any (or without knobs)."""
    lengths = [len(v) for v in (dict(knobs) if knobs is not None else {}).values() if isinstance(v, list)]
    return math.prod(lengths)


class LBFGSAttack(Section):
    steps: PosInt
    lr: PosFloat
    restarts: PosInt


class DLGAttack(LBFGSAttack):
    # how the labels are taken, one configuration each: soft (optimised softmax, DLG's) | analytic (iDLG's reading)
    labels: Annotated[list[Literal["soft", "analytic"]], Field(min_length=1)]


class IGAttack(Section):
    steps: PosInt
    lr: PosFloat
    tv: Annotated[list[Annotated[float, Field(ge=0.0)]], Field(min_length=1)]  # one configuration per TV weight
    restarts: PosInt


class LinearAttack(Section):
    steps: PosInt
    lr: PosFloat
    tv: Annotated[float, Field(ge=0.0)]
    tv_lbfgs: Annotated[float, Field(ge=0.0)]  # the TV weight with L-BFGS's squared-distance objective
    # weights of the gradient-matching term beside the feature term, one configuration each
    match: Annotated[list[PosFloat], Field(min_length=1)]
    restarts: PosInt
    optimiser: Literal["auto", "adam", "lbfgs"]  # auto: L-BFGS for a model without ReLU, signed Adam otherwise


class TAGAttack(Section):
    steps: PosInt
    lr: PosFloat
    alpha: Annotated[float, Field(ge=0.0)]
    restarts: PosInt
    restrict_vocab: bool


class LAMPAttack(Section):
    steps: PosInt
    lr: PosFloat
    embedding_reg: Annotated[float, Field(ge=0.0)]
    reorder_every: PosInt
    reorder_candidates: PosInt
    polish: Annotated[int, Field(ge=0)]
    restarts: PosInt
    restrict_vocab: bool
    lm_weight: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]  # LM prior's coefficient; 0: no prior, never loaded


class ImageAttacks(Section):
    dlg: DLGAttack
    idlg: LBFGSAttack
    ig: IGAttack
    linear: LinearAttack


class TextAttacks(Section):
    tag: TAGAttack
    lamp: LAMPAttack


class Attacks(Section):
    """The attacks' knobs, per modality (a sweep stage lists only its modality's). The analytic attacks
    (token_leakage, dager) have none."""

    image: ImageAttacks
    text: TextAttacks

    def of(self, name: str) -> Section | None:
        """The knobs of attack `name`, None for an attack without any."""
        for group in (self.image, self.text):
            if name in type(group).model_fields:
                return getattr(group, name)
        return None

    def with_steps(self, name: str, steps: int) -> Attacks:
        """These knobs with attack `name`'s `steps` replaced (unchanged for an attack without knobs)."""
        for modality in ("image", "text"):
            group = getattr(self, modality)
            if name in type(group).model_fields:
                tuned = getattr(group, name).model_copy(update={"steps": steps})
                return self.model_copy(update={modality: group.model_copy(update={name: tuned})})
        return self


class PerModel(Section):
    """A section whose keys beyond its own fields are model names (`models.<name>`), each holding that model's entry
    (typed by the subclass's `__pydantic_extra__`); `config` checks every model has one and every one names a model."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        return data

    def grid(self, name: str) -> Any:
        return self.model_extra[name]


class SweepSlice(Section):
    """A further cross product of an architecture's grid: a key left out takes the main grid's value."""

    metrics: unique_list(Metric) | None = None
    ratios: unique_list(Ratio) | None = None
    attacks: unique_list(Attack) | None = None
    threat_models: unique_list(ThreatModel) | None = None
    mask_sources: unique_list(MaskSource) | None = None
    ties: unique_list(Ties) | None = None
    victims: unique_list(VictimState) | None = None
    updates: unique_list(UpdateChange) | None = None
    trials: PosInt | None = None


class SweepArch(Section):
    """The main cross product of an architecture's grid, and `slices`: further cross products run beside it."""

    metrics: unique_list(Metric)
    ratios: unique_list(Ratio)
    attacks: unique_list(Attack)
    threat_models: unique_list(ThreatModel)
    mask_sources: unique_list(MaskSource)
    ties: unique_list(Ties)
    victims: unique_list(VictimState)
    updates: unique_list(UpdateChange) = [UpdateChange()]  # client updates (default: the `update` section alone)
    trials: PosInt
    slices: list[SweepSlice] = []

    def products(self) -> list[SweepSlice]:
        """The main cross product and every slice, each with all keys filled in."""
        main = SweepSlice(**self.model_dump(exclude={"slices"}))
        fill = main.model_dump()
        return [main] + [SweepSlice(**(fill | s.model_dump(exclude_none=True))) for s in self.slices]


class Sweep(PerModel):
    workers: Annotated[int, Field(ge=0)]  # 0 = one per CPU core
    executor: Literal["local", "dask"]  # local: worker processes here (CUDA-safe); dask: a dask.distributed cluster
    dask_address: Annotated[str | None, AfterValidator(_dask_address)]  # None: start a LocalCluster
    dask_workers: Annotated[int, Field(ge=0)]  # LocalCluster worker processes; 0 = one per CPU core
    batch_trials: Annotated[int, Field(ge=0)]  # trials per task (0 = sized by the executor); limit x its trials
    time_limit_s: PosFloat
    bound_grid: Annotated[int, Field(ge=0)]  # t-grid points of L_S for every trial's (B1) columns; 0: no (B1) columns
    bound_iters: PosInt  # power iterations per grid point
    __pydantic_extra__: dict[str, SweepArch] = Field(init=False)  # sweep.<name>: one grid per model


class FrontierArch(Section):
    """One architecture's searches: every metric x victim x tie rule x privacy level, against the strongest of
    `attacks`, along a grid of ratios: linear (i / points, i = 0..points) or log (0, then `points` ratios log-spaced
    from `lowest` to 1), every `check`-th grid ratio being checked above the answer (`search`)."""

    metrics: unique_list(Metric)
    attacks: unique_list(Attack)
    victims: unique_list(VictimState)
    ties: unique_list(Ties)
    updates: unique_list(UpdateChange) = [UpdateChange()]  # client updates (default: the `update` section alone)
    spacing: Literal["linear", "log"]
    points: Annotated[int, Field(ge=2, le=1024)]
    lowest: Annotated[float, Field(gt=0.0, lt=1.0)]  # log spacing only: the smallest ratio above 0
    check: PosInt  # grid indices that are multiples of this are the monotonicity check's ratios

    def grid(self) -> tuple[float, ...]:
        """The ratios searched, ascending, from 0 to 1 (rounded to 6 significant digits: stable cache keys)."""
        if self.spacing == "linear":
            return tuple(i / self.points for i in range(self.points + 1))
        span = [self.lowest ** (1 - i / (self.points - 1)) for i in range(self.points)]
        return (0.0, *(float(f"{r:.6g}") for r in span[:-1]), 1.0)

    def check_ratios(self) -> tuple[float, ...]:
        return tuple(r for i, r in enumerate(self.grid()) if i % self.check == 0)


class Frontier(PerModel):
    """Sequential sampling at every probe of the frontier's searches (`search.Rule`), and the searches per arch."""

    n_start: PosInt  # samples at a new probe
    n_step: PosInt  # samples added while a probe's Wilson interval straddles min_protected
    n_max: PosInt  # the most samples at one probe
    __pydantic_extra__: dict[str, FrontierArch] = Field(init=False)  # frontier.<name>: one search per model

    @model_validator(mode="after")
    def _start_within_max(self) -> Frontier:
        if self.n_start > self.n_max:
            raise PydanticCustomError(
                "n_start",
                "n_start ({n_start}) exceeds n_max ({n_max}); allowed: n_start <= n_max",
                {"n_start": self.n_start, "n_max": self.n_max},
            )
        return self


class TheoryCase(Section):
    """One self-contained attack experiment of the theory stage (a small sweep with mask-aware, own masks)."""

    arch: str  # a model of `models`
    attack: Attack
    steps: PosInt  # replaces the attack's `steps` from the attacks section
    metrics: unique_list(Metric)
    ratios: unique_list(Ratio)
    trials: PosInt
    effective_rank: bool  # T5 on this case (J's exact spectrum: d JVPs and a d x d eigenproblem; small inputs only)


class Theory(Section):
    grid: Annotated[int, Field(ge=2)]
    power_iters: PosInt
    tolerance: Annotated[float, Field(ge=0.0)]
    null_tolerance: Annotated[float, Field(gt=0.0, lt=1.0)]  # T5: near-null singular values, relative to J's largest
    samples: PosInt  # Monte-Carlo draws of Q (T3)
    identity_candidates: PosInt  # far-field candidates x' per mask for the identity check (T1)
    cases: Annotated[list[TheoryCase], Field(min_length=1)]


class PrivacyLevel(Section):
    """A trial is protected at this level when the attack stays under every bound of its modality."""

    psnr_max: Annotated[float, _reachable(0.0, "the PSNR of images in [0, 1] is never negative")]
    ssim_max: Annotated[float, _reachable(-1.0, "SSIM is never below -1")]
    rouge1_max: Ratio
    token_f1_max: Ratio
    min_protected: Annotated[float, Field(gt=0.0, le=1.0)]  # a ratio protects when its share's Wilson low end >= this


class Guidelines(Section):
    levels: Annotated[dict[str, PrivacyLevel], Field(min_length=1)]
    threat_model: ThreatModel
    mask_source: MaskSource
    ties: Ties
    victim: VictimState
    # which client update's trials the guidelines read: the `update` section with these keys replaced; `config`
    # fills in every key left out, so a loaded Params names the update in full (`reads`)
    update: UpdateChange = UpdateChange()

    @property
    def reads(self) -> Update:
        """The client update whose trials the guidelines read (every key filled in by `config.load_params`)."""
        return Update(**self.update.model_dump())


class Params(Section):
    study: Study
    models: Models
    update: Update
    significance: Significance
    he: HE
    attacks: Attacks
    sweep: Sweep
    guidelines: Guidelines
    frontier: Frontier
    theory: Theory


def derive_seed(master: int, *tags: str | int) -> int:
    """A stable 63-bit seed for one purpose, e.g. `derive_seed(seed, "model", name)`; independent of call order."""
    digest = hashlib.sha256(":".join(map(str, (master, *tags))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
