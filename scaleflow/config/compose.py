"""Composing configs with Hydra: the built-in config groups and studies (scaleflow/conf/,
scaleflow/sweeps/), the user's folders on the search path, overrides; every result typed and
validated, every error one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaleflow.config.schema import LAUNCHERS, STUDIES, Config
from scaleflow.config.trackers import TRACKERS, tracker_node
from scaleflow.config.hparams import HPARAMS
from scaleflow.config.validate import validate
from scaleflow.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # scaleflow/
CONF_DIR = PACKAGE_DIR / "conf"  # the built-in config groups (model/, data/, optim/, ...)
SWEEPS_DIR = PACKAGE_DIR / "sweeps"  # the built-in studies
#: Folders of a user's own studies and config groups, searched before the built-in ones
#: (`scaleflow --config-path DIR` sets it for one command).
CONFIG_PATH_ENV = "SCALEFLOW_CONFIG_PATH"


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for name, schema in LAUNCHERS.items():  # conf/launcher/NAME.yaml starts from NAME_schema
        store.store(group="launcher", name=f"{name}_schema", node=schema)
    for name, schema in TRACKERS.items():  # conf/tracker/NAME.yaml starts from NAME_schema
        store.store(group="tracker", name=f"{name}_schema", node=schema)
    for name, schema in HPARAMS.items():  # conf/hparams/NAME.yaml starts from NAME_schema
        store.store(group="hparams", name=f"{name}_schema", node=schema)
    for kind, schema in STUDIES.items():  # a study file's defaults list picks one: `- study: KIND`
        store.store(group="study", name=kind, node=schema)


def _hydra_message(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf exception and its causes."""
    parts = []
    while exc is not None:
        text = str(exc).strip().splitlines()
        if text and text[0] not in parts:
            parts.append(text[0])
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts) or "invalid configuration"


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_schema()
    GlobalHydra.instance().clear()
    folders = [d for d in (*search_path(), CONF_DIR) if d != config_dir]
    extra = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in folders)}]"] if folders else []
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = compose(name, overrides=extra + list(overrides))
    except _error_types() as exc:
        raise ConfigError(_missing_choice(exc) or _hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    with _config_errors():
        if cfg.study is not None and OmegaConf.get_type(cfg.study) not in STUDIES.values():
            cfg.study = _typed_study(cfg.study)  # a study file without `- study: KIND`
        OmegaConf.set_struct(cfg, True)
        _check_study_kind(cfg.study)
        validate(cfg)
    return cfg


def _missing_choice(exc: BaseException) -> str:
    """`GROUP=NAME` naming no config of the group: one line listing the choices ('' otherwise)."""
    missing, options = getattr(exc, "missing_cfg_file", None), getattr(exc, "options", None)
    if not missing or not options or "/" not in missing:
        return ""
    group, _, name = missing.rpartition("/")
    choices = sorted(o for o in options if not o.endswith("_schema"))
    return f"{group}={name!r} is not one of {', '.join(choices)}"


def _typed_study(values: Any, known_only: bool = False) -> DictConfig:
    """A study section typed by the schema of its `kind`: a key of another kind is an error.
    `known_only` drops such keys instead: run configs written before each kind had its own
    schema carry every kind's keys, and a run's study section is only bookkeeping."""
    kind = OmegaConf.select(OmegaConf.create(values), "kind", default="isoflop")
    if kind not in STUDIES:
        raise ConfigError(f"study.kind={kind!r} is not one of {', '.join(STUDIES)}")
    schema = STUDIES[kind]
    unknown = sorted(set(values) - set(schema.__dataclass_fields__))
    if known_only:
        values = {k: v for k, v in values.items() if k not in unknown}
    elif unknown:
        raise ConfigError(f"study.{unknown[0]} is not a setting of {kind} studies")
    return OmegaConf.merge(OmegaConf.structured(schema), values)


def _check_study_kind(study: Any) -> None:
    """study.kind is fixed by the schema the study file picked (`- study: KIND`)."""
    if study is None:
        return
    expected = next(kind for kind, schema in STUDIES.items() if OmegaConf.get_type(study) is schema)
    if study.kind != expected:
        raise ConfigError(f"study.kind={study.kind!r} contradicts the study's schema ({expected}): "
                          f"choose the kind with `- study: KIND` in the defaults list (or study=KIND)")


def _error_types() -> tuple:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError)


class _config_errors:
    """Context manager turning OmegaConf errors into ConfigError."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and isinstance(exc, _error_types()) and not isinstance(exc, ConfigError):
            raise ConfigError(_hydra_message(exc)) from None
        return False


def compose_run(overrides: list[str] = ()) -> DictConfig:
    """The config of one training run: scaleflow/conf/config.yaml plus Hydra overrides."""
    return _compose(CONF_DIR, "config", list(overrides))


def search_path() -> list[Path]:
    """The user's config folders, from $SCALEFLOW_CONFIG_PATH (separated by ':'), in order."""
    folders = [Path(p).expanduser().resolve() for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{CONFIG_PATH_ENV} names {folder}, which is not a folder")
    return folders


def _study_folders() -> list[Path]:
    return [*search_path(), SWEEPS_DIR]


def study_names() -> list[str]:
    return sorted({p.stem for folder in _study_folders() for p in folder.glob("*.yaml") if p.stem != "config"})


def find_study(study: str) -> Path:
    """A study file: a path to a YAML file, or a name looked up in the search path's folders,
    then among the built-in studies."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or "/" in study:
        if not path.is_file():
            raise ConfigError(f"study file {study} does not exist")
        return path.resolve()
    for folder in _study_folders():
        if (folder / f"{study}.yaml").is_file():
            return folder / f"{study}.yaml"
    raise ConfigError(f"unknown study {study!r}; choose one of {', '.join(study_names())} or give a YAML path")


def compose_study(study: str, overrides: list[str] = ()) -> DictConfig:
    """A study: its YAML file (which lists `config` in its defaults) plus overrides."""
    path = find_study(study)
    return _compose(path.parent, path.stem, list(overrides))


def typed_config(values: Any) -> DictConfig:
    """A run's config (a plain dict or loaded YAML) as a typed, validated Config."""
    with _config_errors():
        name = OmegaConf.select(OmegaConf.create(values), "launcher.name", default="local")
        if name not in LAUNCHERS:
            raise ConfigError(f"launcher.name={name!r} is not one of {', '.join(LAUNCHERS)}")
        base = OmegaConf.structured(Config)
        base.launcher = OmegaConf.structured(LAUNCHERS[name])
        values = OmegaConf.create(values)  # a copy: the study is typed apart, by its kind
        study = values.pop("study", None)
        base.tracker = tracker_node(values.pop("tracker", None))  # none in configs written before trackers
        cfg = OmegaConf.merge(base, values)
        if study is not None:
            cfg.study = _typed_study(study, known_only=True)
        OmegaConf.set_struct(cfg, True)
        _check_study_kind(cfg.study)
        validate(cfg)
    return cfg


def typed_values(schema: type, values: dict, what: str) -> dict:
    """`values` (fields of the config dataclass `schema`) type-checked and converted as
    typed_config does for a whole run: a planner checks what it takes from untyped study
    fields (study.shapes, study.decay_variants) with this, once each."""
    try:
        with _config_errors():
            return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), values))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def load_run_config(path: Path) -> DictConfig:
    """A run's resolved config.yaml, checked against the schema."""
    with _config_errors():
        values = OmegaConf.load(path)
    return typed_config(values)
