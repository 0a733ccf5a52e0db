"""The bot's one settings class; built once in `__main__` and passed down."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
