"""Specific exception types, so callers can tell bad data from bad configuration."""


class YoloV2Error(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(YoloV2Error, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class DatasetError(YoloV2Error, ValueError):
    """An input dataset file is malformed; the message names the file and the problem."""


class WeightsError(YoloV2Error, ValueError):
    """A weights file does not match the network it is loaded into."""
