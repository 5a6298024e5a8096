"""Typed, validated study parameters.

`params.yaml` holds every knob of the study. `load_params` turns it into frozen pydantic objects and fails before
any work is done with one `ConfigError` whose message names the key path, the bad value and what is allowed.
That includes what would only fail later: a duplicate YAML key, a modulus chain SEAL rejects, a privacy bound no
attack result can meet, more samples than the dataset has attack targets.
The name tables below (architectures, datasets, metrics, attacks) are the single list of valid names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from selenc.data import TARGET_POOL

# --- names the study knows, and the modality each one fits -------------------------------------------------------
ARCH_MODALITY: dict[str, str] = {"lenet": "image", "cnn": "image", "bert": "text", "gpt2": "text"}
DATASET_MODALITY: dict[str, str] = {"mnist": "image", "cifar10": "image", "rotten_tomatoes": "text"}
METRICS: tuple[str, ...] = (
    "random",
    "magnitude",
    "weight",
    "saliency",
    "sensitivity",
    "hessian",
    "distance",
    "layer_first",
    "layer_last",
    "embedding_rows",
)
TEXT_ONLY_METRICS: frozenset[str] = frozenset({"embedding_rows"})
ATTACK_MODALITY: dict[str, str] = {
    "dlg": "image",
    "idlg": "image",
    "ig": "image",
    "linear": "image",
    "token_leakage": "text",
    "dager": "text",
    "tag": "text",
    "lamp": "text",
}
THREAT_MODELS: tuple[str, ...] = ("mask_aware", "zero_fill")
MASK_SOURCES: tuple[str, ...] = ("own", "shared")
TIES: tuple[str, ...] = ("index", "decoys")  # how a budget past the scored coordinates is filled (`selection`)
VICTIMS: tuple[str, ...] = ("untrained", "trained")  # the seeded init, or that init after `models.<arch>.pretrain`
MAX_BATCH = 8
# SEAL's largest modulus chain (total bits) per ring dimension at 128-bit security (seal::CoeffModulus::MaxBitCount)
SEAL_MAX_BITS: dict[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
# a dask scheduler address: tcp://host:port, tls://host:port, host:port (IPv6 hosts in brackets), or inproc://...
DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|inproc://\S+")

ImageDataset = Literal["mnist", "cifar10"]
TextDataset = Literal["rotten_tomatoes"]
Metric = Literal[METRICS]
Attack = Literal[tuple(ATTACK_MODALITY)]
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
    device: Literal["auto", "cpu", "cuda"]


class Pretrain(Section):
    epochs: Annotated[int, Field(ge=0)]
    samples: PosInt
    batch_size: PosInt
    lr: PosFloat


class LeNet(Section):
    dataset: ImageDataset
    init: Literal["uniform", "default"]
    pretrain: Pretrain


class CNN(Section):
    dataset: ImageDataset
    width: PosInt
    depth: Annotated[int, Field(gt=0, le=6)]  # stride-2 blocks after the first: 32 px allows at most 6
    pretrain: Pretrain


class Bert(Section):
    dataset: TextDataset
    max_length: Annotated[int, Field(ge=4, le=512)]
    pretrain: Pretrain


class GPT2(Section):
    dataset: TextDataset
    n_layer: PosInt
    n_head: PosInt
    n_embd: PosInt
    n_positions: PosInt
    max_length: Annotated[int, Field(ge=4)]
    pretrain: Pretrain

    @model_validator(mode="after")
    def _shapes_fit(self) -> GPT2:
        if self.n_embd % self.n_head:
            raise PydanticCustomError(
                "shape",
                "n_embd={n_embd} must be a multiple of n_head={n_head}",
                {"n_embd": self.n_embd, "n_head": self.n_head},
            )
        if self.max_length > self.n_positions:
            raise PydanticCustomError(
                "shape",
                "max_length={m} exceeds n_positions={p}; allowed: max_length <= n_positions",
                {"m": self.max_length, "p": self.n_positions},
            )
        return self


class Models(Section):
    lenet: LeNet
    cnn: CNN
    bert: Bert
    gpt2: GPT2


class Update(Section):
    kind: Literal["fedsgd", "fedavg"]
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)]
    local_steps: PosInt
    local_lr: PosFloat


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


class LBFGSAttack(Section):
    steps: PosInt
    lr: PosFloat
    restarts: PosInt


class IGAttack(Section):
    steps: PosInt
    lr: PosFloat
    tv: Annotated[float, Field(ge=0.0)]
    restarts: PosInt


class LinearAttack(Section):
    steps: PosInt
    lr: PosFloat
    tv: Annotated[float, Field(ge=0.0)]
    tv_lbfgs: Annotated[float, Field(ge=0.0)]  # the TV weight with L-BFGS's squared-distance objective
    match: PosFloat  # weight of the gradient-matching term beside the feature term
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


class Attacks(Section):
    dlg: LBFGSAttack
    idlg: LBFGSAttack
    ig: IGAttack
    linear: LinearAttack
    tag: TAGAttack
    lamp: LAMPAttack


class SweepSlice(Section):
    """A further cross product of an architecture's grid: a key left out takes the main grid's value."""

    metrics: unique_list(Metric) | None = None
    ratios: unique_list(Ratio) | None = None
    attacks: unique_list(Attack) | None = None
    threat_models: unique_list(ThreatModel) | None = None
    mask_sources: unique_list(MaskSource) | None = None
    ties: unique_list(Ties) | None = None
    victims: unique_list(VictimState) | None = None
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
    trials: PosInt
    slices: list[SweepSlice] = []

    def products(self) -> list[SweepSlice]:
        """The main cross product and every slice, each with all keys filled in."""
        main = SweepSlice(**self.model_dump(exclude={"slices"}))
        fill = main.model_dump()
        return [main] + [SweepSlice(**(fill | s.model_dump(exclude_none=True))) for s in self.slices]


class Sweep(Section):
    workers: Annotated[int, Field(ge=0)]  # 0 = one per CPU core
    executor: Literal["local", "dask"]  # local: worker processes here (CUDA-safe); dask: a dask.distributed cluster
    dask_address: Annotated[str | None, AfterValidator(_dask_address)]  # None: start a LocalCluster
    dask_workers: Annotated[int, Field(ge=0)]  # LocalCluster worker processes; 0 = one per CPU core
    batch_trials: Annotated[int, Field(ge=0)]  # trials per task (0 = sized by the executor); limit x its trials
    time_limit_s: PosFloat
    bound_grid: Annotated[int, Field(ge=0)]  # t-grid points of L_S for every trial's (B1) columns; 0: no (B1) columns
    bound_iters: PosInt  # power iterations per grid point
    lenet: SweepArch
    cnn: SweepArch
    bert: SweepArch
    gpt2: SweepArch


class TheoryCase(Section):
    """One self-contained attack experiment of the theory stage (a small sweep with mask-aware, own masks)."""

    arch: Literal[tuple(ARCH_MODALITY)]
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


class Params(Section):
    study: Study
    models: Models
    update: Update
    significance: Significance
    he: HE
    attacks: Attacks
    sweep: Sweep
    guidelines: Guidelines
    theory: Theory


# --- loading -----------------------------------------------------------------------------------------------------
def _format_error(err: dict, source: str) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<top level>"
    if err["type"] == "missing":
        return f"{source}: {path}: missing required key"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "unknown_key":
        key = err["ctx"]["key"]
        return f"{source}: {path + '.' if err['loc'] else ''}{key}: {msg}"
    return f"{source}: {path}: {msg} (got {err['input']!r})"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _check_modalities(p: Params, source: str) -> None:
    """Cross-section rules pydantic cannot see field by field: names must fit the architecture's modality."""
    for arch, modality in ARCH_MODALITY.items():
        dataset = getattr(p.models, arch).dataset
        if DATASET_MODALITY[dataset] != modality:  # guarded by the Literal types too; kept for new datasets
            raise ConfigError(f"{source}: models.{arch}.dataset: {dataset!r} is not {_a(modality)} dataset")
        for i, grid in enumerate(getattr(p.sweep, arch).products()):
            where = f"{source}: sweep.{arch}" + (f".slices.{i - 1}" if i else "")
            _check_grid(where, arch, grid.attacks, grid.metrics)
            if "trained" in grid.victims and not getattr(p.models, arch).pretrain.epochs:
                raise ConfigError(
                    f"{where}.victims: 'trained' needs a pretraining, but models.{arch}.pretrain.epochs is 0; "
                    f"allowed: untrained, or trained with models.{arch}.pretrain.epochs > 0"
                )
    for i, case in enumerate(p.theory.cases):
        _check_grid(f"{source}: theory.cases.{i}", case.arch, [case.attack], case.metrics)


def _check_grid(where: str, arch: str, attacks: list[str], metrics: list[str]) -> None:
    modality = ARCH_MODALITY[arch]
    allowed = [a for a, m in ATTACK_MODALITY.items() if m == modality]
    for attack in attacks:
        if ATTACK_MODALITY[attack] != modality:
            raise ConfigError(
                f"{where}.attacks: {attack!r} is {_a(ATTACK_MODALITY[attack])} attack and "
                f"{arch} is {_a(modality)} model; allowed: {', '.join(allowed)}"
            )
    if modality == "image":
        for metric in metrics:
            if metric in TEXT_ONLY_METRICS:
                raise ConfigError(
                    f"{where}.metrics: {metric!r} needs a token embedding and {arch} is an "
                    f"image model; allowed: {', '.join(m for m in METRICS if m not in TEXT_ONLY_METRICS)}"
                )


def _check_limits(p: Params, source: str) -> None:
    """Values each valid alone that fail later together: a modulus chain SEAL rejects, more samples than targets."""
    bits, n = sum(p.he.coeff_mod_bit_sizes), p.he.poly_modulus_degree
    if bits > SEAL_MAX_BITS[n]:
        raise ConfigError(
            f"{source}: he.coeff_mod_bit_sizes: the modulus chain {p.he.coeff_mod_bit_sizes} has {bits} bits; "
            f"SEAL allows at most {SEAL_MAX_BITS[n]} bits at poly_modulus_degree={n} (128-bit security): "
            "use fewer or smaller primes or a larger poly_modulus_degree"
        )
    grids = [
        (f"sweep.{arch}" + (f".slices.{i - 1}" if i else ""), arch, grid.trials)
        for arch in ARCH_MODALITY
        for i, grid in enumerate(getattr(p.sweep, arch).products())
    ]
    grids += [(f"theory.cases.{i}", case.arch, case.trials) for i, case in enumerate(p.theory.cases)]
    batch = p.update.batch_size
    for where, arch, trials in grids:
        dataset = getattr(p.models, arch).dataset
        if trials * batch > TARGET_POOL[dataset]:
            raise ConfigError(
                f"{source}: {where}.trials: {trials} trials x update.batch_size {batch} = {trials * batch} samples, "
                f"but the {dataset} target pool has only {TARGET_POOL[dataset]}; lower the trials or the batch size"
            )


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping; raise `ConfigError` with the first problem found."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc.errors()[0], source)) from None
    _check_modalities(params, source)
    _check_limits(params, source)
    return params


class DuplicateKeyError(yaml.YAMLError):
    """A mapping repeats a key (plain YAML keeps the last one silently)."""

    def __init__(self, key: str, where: str, line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} {where}; each key may appear once")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated within one mapping, naming its line and key path."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, [])
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: list[str]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, Any]] = set()
            for key_node, value_node in node.value:
                key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                if key in seen:
                    where = f"in {'.'.join(path)}" if path else "at the top level"
                    raise DuplicateKeyError(key_node.value, where, key_node.start_mark.line + 1)
                if key is not None:
                    seen.add(key)
                self._check_unique(value_node, [*path, str(key_node.value)])
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, [*path, str(i)])


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every problem is a one-line `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(raw, str(path))


def derive_seed(master: int, *tags: str | int) -> int:
    """A stable 63-bit seed for one purpose, e.g. `derive_seed(seed, "model", "lenet")`; independent of call order."""
    digest = hashlib.sha256(":".join(map(str, (master, *tags))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
