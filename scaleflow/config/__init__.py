"""Typed configs: the schema (one dataclass per config group), their composition with Hydra,
validation, and a run's identity.

Every config group has a dataclass here; the YAML files in `scaleflow/conf/` and
`scaleflow/sweeps/` (and in the user's folders of $SCALEFLOW_CONFIG_PATH) only fill in values.
Because the composed config is structured, a mistyped key or a value of the wrong type
in a file or an override is an error, never a silent default.

Units are in the field comments: FLOPs are floating-point operations, tokens are tokens
(bytes for byte-level corpora), batch sizes are in sequences unless a name says tokens.
"""


from scaleflow.config.compose import (CONF_DIR, CONFIG_PATH_ENV, SWEEPS_DIR, compose_run, compose_study, find_study,
                                      load_run_config, search_path, study_names, typed_config, typed_values)
from scaleflow.config.identity import run_id, run_section
from scaleflow.config.schema import (FLOP_COUNTS, LAUNCHERS, PARAM_COUNTS, Config, DataConfig, LocalLauncherConfig,
                                     ModelConfig, MupConfig, OptimConfig, ScheduleConfig, SlurmLauncherConfig,
                                     StudyConfig, TrainerConfig, validate_model)
from scaleflow.config.validate import validate

__all__ = ["CONF_DIR", "CONFIG_PATH_ENV", "FLOP_COUNTS", "LAUNCHERS", "PARAM_COUNTS", "SWEEPS_DIR", "Config",
           "DataConfig", "LocalLauncherConfig", "ModelConfig", "MupConfig", "OptimConfig", "ScheduleConfig",
           "SlurmLauncherConfig", "StudyConfig", "TrainerConfig", "compose_run", "compose_study", "find_study",
           "load_run_config", "run_id", "run_section", "search_path", "study_names", "typed_config", "typed_values",
           "validate", "validate_model"]
