"""Loading params: `params.yaml` validated into frozen `settings.Params`, or one clear error.

    python -m selenc.config [--params FILE]   # validate a params file, then print the victims it describes

`load_params` turns a params file into the sections of `settings` and fails before any work is done with one
`ConfigError` whose message names the key path, the bad value and what is allowed. That includes what would only fail
later: a duplicate YAML key, a name no registry declares, a modulus chain SEAL rejects, an attack or metric that does
not fit the model's modality, more samples than the dataset has attack targets, a model builder that cannot be
imported, returns no module, has no parameters or does not fit its dataset's input (`check_model`: each model is built
once and run on one real sample), an attack that reads a part the model lacks.

The names a grid may use are those the code declares, in one place each: significance metrics in
`significance.METRICS` (with `significance.NEEDS_TOKEN_EMBEDDING`), attacks and their modality in `attacks.MODALITY`
(with `attacks.NEEDS`), models in params' own `models` section (each with a `sweep.<name>` grid and a
`frontier.<name>` search).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from pydantic import ConfigDict, ValidationError, create_model

from selenc.attacks import MODALITY as ATTACK_MODALITY
from selenc.attacks import NEEDS as ATTACK_NEEDS
from selenc.data import PRETRAIN_POOL, TARGET_POOL
from selenc.models import (
    NUM_CLASSES,
    Victim,
    build_module,
    build_victim,
    builder_file,
    builder_options,
    import_builder,
    input_shape,
    target_batch,
)
from selenc.settings import (
    SEAL_MAX_BITS,
    Attacks,
    ConfigError,
    ModelEntry,
    Params,
    Update,
    UpdateChange,
)
from selenc.significance import METRICS, NEEDS_TOKEN_EMBEDDING
from selenc.zoo import TOKENIZERS

# every attack with knobs in params.yaml is a registered attack of that modality (a bug otherwise, found at import)
for _modality, _section in Attacks.model_fields.items():
    _wrong = [a for a in _section.annotation.model_fields if ATTACK_MODALITY.get(a) != _modality]
    if _wrong:
        raise ImportError(
            f"settings.Attacks.{_modality} has knobs for {_wrong}: not {_modality} attacks of the registry"
        )


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


class _Grid(NamedTuple):
    """A sweep product or a theory case, as the cross-section checks read it."""

    where: str  # its key path, e.g. sweep.<name>.slices.0
    arch: str
    metrics: list[str]
    attacks: list[tuple[str, str]]  # (key below `where`, attack name)
    victims: list[str]
    trials: int
    batches: list[tuple[str, int]]  # (the key that sets it, batch size) per client update the grid runs
    updates: list[tuple[str, Update]]  # (the key that names it, the update in full) per client update the grid runs
    count: str = "trials"  # the key below `where` (or absolute, with a dot) that sets `trials`


def _batches(p: Params, where: str, updates: list[UpdateChange]) -> list[tuple[str, int]]:
    """Each update's batch size with the key that sets it: `<where>.updates.<k>.batch_size` or update.batch_size."""
    return [
        (f"{where}.updates.{k}.batch_size", u.batch_size) if u.batch_size is not None else ("update.batch_size", b)
        for k, u in enumerate(updates)
        for b in [p.update.batch_size]
    ]


def _updates(p: Params, where: str, updates: list[UpdateChange]) -> list[tuple[str, Update]]:
    """Each update in full with the key that names it: `<where>.updates.<k>` (`update` when the grid lists none)."""
    return [(f"{where}.updates.{k}", u.over(p.update)) for k, u in enumerate(updates)]


def _grids(p: Params) -> list[_Grid]:
    out = []
    for arch in p.models.names:
        sweep = p.sweep.grid(arch)
        for i, grid in enumerate(sweep.products()):
            where = f"sweep.{arch}" + (f".slices.{i - 1}" if i else "")
            own = i == 0 or sweep.slices[i - 1].updates is not None  # else the main grid's updates
            named = where if own else f"sweep.{arch}"
            batches, updates = _batches(p, named, grid.updates), _updates(p, named, grid.updates)
            attacks = [(f"attacks.{j}", a) for j, a in enumerate(grid.attacks)]
            out.append(_Grid(where, arch, grid.metrics, attacks, grid.victims, grid.trials, batches, updates))
    seeds = p.study.model_seeds
    out += [  # a frontier probe's samples are (init, trial) pairs: n_max of them need ceil(n_max / seeds) trials
        _Grid(
            f"frontier.{arch}",
            arch,
            f.metrics,
            [(f"attacks.{j}", a) for j, a in enumerate(f.attacks)],
            f.victims,
            -(-p.frontier.n_max // seeds),
            _batches(p, f"frontier.{arch}", f.updates),
            _updates(p, f"frontier.{arch}", f.updates),
            "frontier.n_max",
        )
        for arch in p.models.names
        for f in [p.frontier.grid(arch)]
    ]
    cases = p.theory.cases
    return out + [
        _Grid(
            f"theory.cases.{i}",
            c.arch,
            c.metrics,
            [("attack", c.attack)],
            ["untrained"],
            c.trials,
            [("update.batch_size", p.update.batch_size)],
            [("update", p.update)],
        )
        for i, c in enumerate(cases)
    ]


def _check_names(p: Params, source: str) -> None:
    """Every metric and attack a grid names is declared by its registry."""
    for grid in _grids(p):
        named = [(f"metrics.{i}", m, METRICS, "a significance metric") for i, m in enumerate(grid.metrics)]
        named += [(key, a, ATTACK_MODALITY, "an attack") for key, a in grid.attacks]
        for key, name, known, what in named:
            if name not in known:
                raise ConfigError(f"{source}: {grid.where}.{key}: {name!r} is not {what}; allowed: {', '.join(known)}")


def _check_models(p: Params, source: str) -> None:
    """Every model has a sweep grid and a frontier search, every grid and theory case names a model."""
    names = p.models.names
    allowed = ", ".join(names)
    for section in ("sweep", "frontier"):
        grids = getattr(p, section).model_extra
        for name in names:
            if name not in grids:
                raise ConfigError(
                    f"{source}: {section}.{name}: missing: model {name!r} (models.{name}) needs a {section} grid"
                )
        for name in grids:
            if name not in names:
                raise ConfigError(f"{source}: {section}.{name}: {name!r} is not a model of models; allowed: {allowed}")
    for i, case in enumerate(p.theory.cases):
        if case.arch not in names:
            raise ConfigError(
                f"{source}: theory.cases.{i}.arch: {case.arch!r} is not a model of models; allowed: {allowed}"
            )


def _check_modalities(p: Params, source: str) -> None:
    """Cross-section rules pydantic cannot see field by field: names must fit the model's modality and parts."""
    for grid in _grids(p):
        _check_grid(f"{source}: {grid.where}", p.models[grid.arch].modality, grid.arch, grid.attacks, grid.metrics)
        victim = probe(p.models[grid.arch], grid.arch)
        fits = [a for a, m in ATTACK_MODALITY.items() if m == victim.modality and _has_parts(a, victim)]
        for key, attack in grid.attacks:
            if not _has_parts(attack, victim):
                raise ConfigError(
                    f"{source}: {grid.where}.{key}: {attack!r} reads {ATTACK_NEEDS[attack][0]}, which model "
                    f"{grid.arch!r} lacks; allowed: {', '.join(fits) or 'none'}"
                )
        if "trained" in grid.victims and not p.models[grid.arch].pretrain.epochs:
            epochs = f"models.{grid.arch}.pretrain.epochs"
            raise ConfigError(
                f"{source}: {grid.where}.victims: 'trained' needs a pretraining, but {epochs} is 0; "
                f"allowed: untrained, or trained with {epochs} > 0"
            )


def _has_parts(attack: str, victim: Victim) -> bool:
    """Whether the victim has every part `attack` reads (`attacks.NEEDS`; an attack not listed reads none)."""
    return attack not in ATTACK_NEEDS or ATTACK_NEEDS[attack][1](victim)


def _check_grid(where: str, modality: str, arch: str, attacks: list[tuple[str, str]], metrics: list[str]) -> None:
    allowed = [a for a, m in ATTACK_MODALITY.items() if m == modality]
    for _, attack in attacks:
        if ATTACK_MODALITY[attack] != modality:
            raise ConfigError(
                f"{where}.attacks: {attack!r} is {_a(ATTACK_MODALITY[attack])} attack and "
                f"{arch} is {_a(modality)} model; allowed: {', '.join(allowed)}"
            )
    if modality == "image":
        for metric in metrics:
            if metric in NEEDS_TOKEN_EMBEDDING:
                raise ConfigError(
                    f"{where}.metrics: {metric!r} needs a token embedding and {arch} is an "
                    f"image model; allowed: {', '.join(m for m in METRICS if m not in NEEDS_TOKEN_EMBEDDING)}"
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
    if p.update.rounds > 1:  # every theory case reads the update section
        raise ConfigError(
            f"{source}: update.rounds: {p.update.rounds}, but the theory stage checks one message; allowed: 1 "
            "(set rounds in a sweep grid's or frontier's updates)"
        )
    for grid in _grids(p):
        dataset = p.models[grid.arch].dataset
        key = grid.count if "." in grid.count else f"{grid.where}.{grid.count}"
        for batch_key, batch in grid.batches:
            if grid.trials * batch > TARGET_POOL[dataset]:
                raise ConfigError(
                    f"{source}: {key}: {grid.trials} trials x {batch_key} {batch} = {grid.trials * batch} samples, but "
                    f"the {dataset} target pool has only {TARGET_POOL[dataset]}; lower the trials or the batch size"
                )
        _check_rounds(grid, source, p.models[grid.arch].modality)


def _check_rounds(grid: _Grid, source: str, modality: str) -> None:
    """A multi-round update needs peers the pretraining pool can hold (every attack combines rounds)."""
    for key, update in grid.updates:
        if update.rounds == 1:
            continue
        pool = PRETRAIN_POOL[modality]
        peers = (update.clients - 1) * update.batch_size
        if peers > pool:
            raise ConfigError(
                f"{source}: {key}: {update.clients - 1} peers x batch size {update.batch_size} = {peers} samples, but "
                f"the pretraining pool the peers draw from has only {pool}; lower clients or the batch size"
            )


_ENTRY_KEYS = tuple(ModelEntry.model_fields)
_BUILDER_HINT = 'allowed: "package.module:function" naming a callable that returns a torch.nn.Module'


def check_model(entry: ModelEntry, name: str, source: str) -> ModelEntry:
    """The entry with its builder's defaults filled in, after checking what only the builder can say: it imports,
    its keyword arguments are the entry's other keys (types and ranges from its annotations), it returns a module
    with parameters that maps one real sample of the dataset to one logit per class (`probe`)."""
    where = f"{source}: models.{name}"
    if entry.modality == "text" and entry.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"{where}.tokenizer: {entry.tokenizer!r} is not a tokenizer source; allowed: {', '.join(TOKENIZERS)}"
        )
    try:
        builder = import_builder(entry.builder)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}.builder: cannot import {entry.builder!r} ({exc}); {_BUILDER_HINT}") from None
    origin = builder_file(entry)
    source = Path(entry.source).parts
    if origin.parts[-len(source) :] != source:  # the project-relative path of the module's file
        raise ConfigError(
            f"{where}.source: {entry.source!r} is not the file {entry.builder} is defined in ({origin}); allowed: "
            "its path relative to the project (the file dvc watches for this model)"
        )
    options = builder_options(builder, entry.modality)
    hints = typing.get_type_hints(builder, include_extras=True)
    schema = create_model(
        f"{name}_options",
        __config__=ConfigDict(extra="forbid", strict=True),
        **{
            n: (hints.get(n, Any), ... if p.default is inspect.Parameter.empty else p.default)
            for n, p in options.items()
        },
    )
    given = entry.options
    unknown = [k for k in given if k not in options]
    if unknown:
        allowed = ", ".join([*_ENTRY_KEYS, *options])
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys: {allowed} ({entry.builder}'s arguments)")
    try:
        filled = schema.model_validate(given).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(_format_error(err | {"loc": ("models", name, *err["loc"])}, source)) from None
    entry = ModelEntry.model_validate(entry.model_dump(exclude=set(given)) | filled)
    probe(entry, name, where)
    return entry


_PROBED: dict[str, Victim] = {}  # entry JSON -> its probed victim (a model builds once per process)


def _probe(entry: ModelEntry, name: str, where: str) -> Victim:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            module, tokenizer = build_module(entry)
        except Exception as exc:  # the user's builder: whatever it raises is the message
            raise ConfigError(f"{where}: {entry.builder} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"{where}.builder: {entry.builder} returned {type(module).__name__}, not a torch.nn.Module; {_BUILDER_HINT}"
        )
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError(
            f"{where}.builder: {entry.builder} returned a module without trainable parameters (there is no gradient "
            "to share); allowed: a module with at least one parameter that requires grad"
        )
    classes = NUM_CLASSES[entry.dataset]
    if entry.mode == "train" and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules()):
        raise ConfigError(
            f"{where}.mode: 'train' runs the module's dropout, so the shared update would be random; "
            "allowed: eval, or train for a module without dropout"
        )
    shape = input_shape(entry)
    victim = Victim(
        name, module.eval(), torch.device("cpu"), classes, shape, tokenizer, modality=entry.modality, mode=entry.mode
    )
    try:  # one real sample: the first attack target
        with torch.no_grad():
            logits = victim.logits(target_batch(victim, entry.dataset, [0]))
            if entry.modality == "text":
                victim.layout  # noqa: B018  (the parts the text attacks read, discovered once here)
    except Exception as exc:  # a module that does not fit the data: whatever it raises is the message
        fits = f"(1, {', '.join(map(str, shape))}) images in [0, 1]" if entry.modality == "image" else "token ids"
        raise ConfigError(
            f"{where}: {entry.builder}'s module does not fit {entry.dataset}: {type(exc).__name__}: {exc}; allowed: a "
            f"module mapping {fits} to {classes} logits"
        ) from None
    if tuple(logits.shape) != (1, classes):
        raise ConfigError(
            f"{where}: {entry.builder}'s module maps one {entry.dataset} sample to shape {tuple(logits.shape)}; "
            f"allowed: (1, {classes}), one logit per class of {entry.dataset}"
        )
    return victim


def probe(entry: ModelEntry, name: str, where: str = "params") -> Victim:
    """The entry's model built once on CPU (seeded, cached per process) and run on one real sample, as a `Victim`
    whose discovered parts `attacks.NEEDS` checks; a `ConfigError` naming what does not fit."""
    key = entry.model_dump_json()
    if key not in _PROBED:
        _PROBED[key] = _probe(entry, name, where)
    return _PROBED[key]


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping; raise `ConfigError` with the first problem found."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc.errors()[0], source)) from None
    _check_models(params, source)
    entries = {name: check_model(params.models[name], name, source) for name in params.models.names}
    params = params.model_copy(update={"models": params.models.model_copy(update=entries)})
    _check_names(params, source)
    _check_modalities(params, source)
    _check_limits(params, source)
    reads = UpdateChange(**params.guidelines.update.over(params.update).model_dump())  # every key filled in
    return params.model_copy(update={"guidelines": params.guidelines.model_copy(update={"update": reads})})


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


def known_model(params: Params, name: str) -> None:
    """Refuse a model name params does not configure (a stage's `--arch`)."""
    if name not in params.models.names:
        raise ConfigError(f"--arch: {name!r} is not a model of params; allowed: {', '.join(params.models.names)}")


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


def main(argv: list[str] | None = None) -> int:
    """Validate a params file (one line on stderr if it is not valid), then print the victims it builds: parameter
    counts, inputs and the device."""
    parser = argparse.ArgumentParser(prog="python -m selenc.config", description=main.__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    try:
        params = load_params(parser.parse_args(argv).params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| arch | modality | dataset | parameters | input | device |\n|---|---|---|---:|---|---|")
    for arch in params.models.names:
        v = build_victim(arch, params)
        dataset = params.models[arch].dataset
        print(f"| {arch} | {v.modality} | {dataset} | {v.num_parameters():,} | {v.input_shape} | {v.device} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
