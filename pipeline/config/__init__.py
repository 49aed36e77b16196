"""The configuration: typed schema (`schema.py`), one registry per named choice (`choices.py`) and
the checks types cannot express (`validate.py`)."""

from pipeline.config.schema import PipelineConfig, register_schemas
from pipeline.config.validate import validate

__all__ = ["PipelineConfig", "register_schemas", "validate"]
