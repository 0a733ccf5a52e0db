"""Everything the bot keeps: SQLite (`db`, `migrations`), quotas, styles, series, the
gallery, and image files under DATA_DIR (`files`). Imports nothing from `bot.ui`."""
