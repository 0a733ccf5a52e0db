"""Versioned schema migrations, applied in order at start.

`PRAGMA user_version` records how far a database has come. A migration is appended, never
edited: databases made by older versions upgrade by running only what they lack.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "jobs and their images",
        [
            """
            CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                kind TEXT NOT NULL DEFAULT 'new',
                parent_id INTEGER REFERENCES jobs(id),
                prompt TEXT NOT NULL,
                negative_prompt TEXT,
                strength REAL NOT NULL,
                seed INTEGER NOT NULL,
                steps INTEGER NOT NULL,
                guidance REAL NOT NULL,
                input_path TEXT NOT NULL,
                input_width INTEGER NOT NULL,
                input_height INTEGER NOT NULL,
                output_path TEXT,
                state TEXT NOT NULL DEFAULT 'queued',
                counted INTEGER NOT NULL DEFAULT 1,
                error TEXT,
                steps_run INTEGER,
                steps_total INTEGER,
                seconds REAL,
                model TEXT,
                application_id INTEGER,
                interaction_token TEXT,
                token_expires_at REAL,
                status_message_id INTEGER,
                result_message_id INTEGER,
                reply_to_message_id INTEGER,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL
            )
            """,
            "CREATE INDEX jobs_state ON jobs(state, id)",
            "CREATE INDEX jobs_usage ON jobs(guild_id, user_id, created_at)",
        ],
    ),
    (
        "quotas and server settings",
        [
            """
            CREATE TABLE guild_settings (
                guild_id INTEGER PRIMARY KEY,
                user_daily INTEGER,
                guild_daily INTEGER,
                allowed_channels TEXT,  -- JSON list of channel ids; NULL = every channel
                gallery_channel_id INTEGER,
                updated_at REAL
            )
            """,
            """
            CREATE TABLE role_limits (
                guild_id INTEGER,
                role_id INTEGER,
                user_daily INTEGER,
                exempt INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (guild_id, role_id)
            )
            """,
            """
            CREATE TABLE settings_audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER,
                user_id INTEGER,
                at REAL,
                change TEXT
            )
            """,
            "CREATE INDEX settings_audit_guild ON settings_audit(guild_id, at)",
            """
            CREATE TABLE usage_resets (
                guild_id INTEGER,
                user_id INTEGER,
                at REAL,
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            "CREATE INDEX jobs_guild_usage ON jobs(guild_id, created_at)",
        ],
    ),
    (
        "server galleries",
        [
            """
            CREATE TABLE gallery (
                job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                message_id INTEGER,
                prompt TEXT NOT NULL,
                negative_prompt TEXT,
                strength REAL NOT NULL,
                seed INTEGER NOT NULL,
                image_path TEXT NOT NULL,
                search_text TEXT NOT NULL,  -- the prompt, case-folded
                created_at REAL NOT NULL,
                pruned INTEGER NOT NULL DEFAULT 0,
                removed INTEGER NOT NULL DEFAULT 0,
                shared_channel_id INTEGER,
                shared_message_id INTEGER
            )
            """,
            "CREATE INDEX gallery_browse ON gallery(guild_id, removed, created_at, job_id)",
            "CREATE INDEX gallery_user ON gallery(guild_id, user_id, removed, created_at)",
            "CREATE INDEX gallery_image ON gallery(image_path)",
            """
            CREATE TABLE gallery_searches (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                search TEXT NOT NULL,
                UNIQUE (guild_id, search)
            )
            """,
            """
            INSERT INTO gallery (job_id, guild_id, user_id, channel_id, message_id, prompt,
                negative_prompt, strength, seed, image_path, search_text, created_at)
            SELECT id, guild_id, user_id, channel_id, result_message_id, prompt,
                negative_prompt, strength, seed, output_path, lower(prompt),
                COALESCE(finished_at, created_at)
            FROM jobs WHERE state = 'done' AND output_path IS NOT NULL
            """,
        ],
    ),
    (
        "safety: channel visibility, age-restricted channels, blocked words, command hash",
        [
            # Where a job was made: viewable by @everyone (1/0) and age-restricted (1/0).
            # Rows from before this version are treated as public, as they were shown.
            "ALTER TABLE jobs ADD COLUMN channel_public INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE jobs ADD COLUMN channel_nsfw INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN nsfw INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE gallery ADD COLUMN channel_public INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE guild_settings ADD COLUMN nsfw_channels TEXT NOT NULL DEFAULT 'filter'",
            """
            CREATE TABLE blocked_words (
                guild_id INTEGER NOT NULL,
                word TEXT NOT NULL,  -- NFKC-normalised and case-folded
                added_by INTEGER,
                added_at REAL,
                PRIMARY KEY (guild_id, word)
            )
            """,
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
            # Quota units of jobs whose rows a member had deleted (/gallery forget-me): the
            # budget keeps counting them, so forgetting never resets a budget.
            """
            CREATE TABLE usage_kept (
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                created_at REAL NOT NULL,
                counted INTEGER NOT NULL
            )
            """,
            "CREATE INDEX usage_kept_user ON usage_kept(guild_id, user_id, created_at)",
        ],
    ),
    (
        "saved styles; the style a job used",
        [
            # owner_id is the member's user id, or 0 for a server style (NULL would defeat
            # the UNIQUE constraint). Names follow bot.styles.NAME_RE.
            """
            CREATE TABLE styles (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                owner_id INTEGER NOT NULL,
                name TEXT NOT NULL,
                template TEXT NOT NULL,
                negative_prompt TEXT,
                strength REAL,
                created_by INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                UNIQUE (guild_id, owner_id, name)
            )
            """,
            "ALTER TABLE jobs ADD COLUMN style TEXT",
        ],
    ),
    (
        "series: one album of jobs sharing prompt, strength and seed",
        [
            """
            CREATE TABLE series (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                size INTEGER NOT NULL,
                seed INTEGER NOT NULL,
                message_id INTEGER,  -- the album message, once posted
                created_at REAL NOT NULL
            )
            """,
            """
            CREATE TABLE series_items (
                series_id INTEGER NOT NULL REFERENCES series(id),
                position INTEGER NOT NULL,  -- 1-based, the input order
                job_id INTEGER NOT NULL UNIQUE,  -- no FK: /gallery forget-me deletes job rows
                label TEXT NOT NULL,  -- the uploaded file's name
                PRIMARY KEY (series_id, position)
            )
            """,
        ],
    ),
    (
        "inpainting: what a job repaints",
        [
            # mode: 'img2img' (the whole picture) or 'inpaint'. mask_path: the stored mask
            # (inputs/NAME.mask.png, next to its input), NULL for region words. mask_source:
            # what the result names as masked ("mask", "transparent area" or the words).
            "ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT 'img2img'",
            "ALTER TABLE jobs ADD COLUMN mask_path TEXT",
            "ALTER TABLE jobs ADD COLUMN mask_source TEXT",
            "ALTER TABLE jobs ADD COLUMN region TEXT",
            "ALTER TABLE jobs ADD COLUMN crop TEXT NOT NULL DEFAULT 'auto'",
        ],
    ),
    (
        "picture messages: every public message that shows a job's picture",
        [
            # Use and Open… copies, albums and comparisons (bot/store/picture_messages.py),
            # so deleting a picture reaches every message showing it. No FK on job_id:
            # forget-me deletes job rows and these with them.
            """
            CREATE TABLE picture_messages (
                message_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                guild_id INTEGER NOT NULL,
                job_id INTEGER NOT NULL,
                kind TEXT NOT NULL,  -- 'single', 'album' or 'comparison'
                PRIMARY KEY (message_id, job_id)
            )
            """,
            "CREATE INDEX picture_messages_job ON picture_messages (job_id)",
        ],
    ),
    (
        "remote workers: who holds a job (its attempt and the worker process)",
        [
            # One row per job granted to a remote worker and not ended: the attempt number
            # and the worker's id and process nonce, so a bot started after a deploy adopts
            # what a live worker still runs and ignores stale events (bot.jobs.backends).
            """
            CREATE TABLE job_holders (
                job_id INTEGER PRIMARY KEY,  -- no FK: /gallery forget-me deletes job rows
                attempt INTEGER NOT NULL,
                worker_id TEXT NOT NULL,
                worker_nonce TEXT NOT NULL,
                granted_at REAL NOT NULL
            )
            """,
        ],
    ),
    (
        "whether a safety checker looked at a job's picture",
        [
            # filtered: 1 a checker looked, 0 none was loaded (the worker's answer,
            # GenerationResult.filtered); NULL for jobs from before: not known.
            "ALTER TABLE jobs ADD COLUMN filtered INTEGER",
        ],
    ),
    (
        "second chances, bounded: a job sent back by its worker, a final message redelivered",
        [
            # retries: times the worker sent the job back through no fault of its own
            # (`Failed.retry`) and it ran again (bot.jobs.events.MAX_RETRIES).
            "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
            # delivered_at: when the job's final message (result or notice) reached
            # Discord; NULL on an ended job means a stop cut it off, and a start delivers
            # it again, at most MAX_DELIVERY_TRIES times (delivery_tries counts them).
            "ALTER TABLE jobs ADD COLUMN delivered_at REAL",
            "ALTER TABLE jobs ADD COLUMN delivery_tries INTEGER NOT NULL DEFAULT 0",
            # Jobs that ended before this migration had their messages sent (or never will),
            # except a result never posted: the next start posts it, as before.
            "UPDATE jobs SET delivered_at=finished_at WHERE state NOT IN ('queued', 'running') "
            "AND NOT (state='done' AND result_message_id IS NULL)",
        ],
    ),
    (
        "upscales: an Upscale ×2 and its tile jobs (one img2img job per tile)",
        [
            # One row per upscale: what it enlarges (`source_path`, an input of its own),
            # the upscaled size, the tiles' boxes (JSON, in tile order) and the message
            # that shows its progress. `final_job_id`: the job that safety-checks the
            # blended picture and posts it, once every tile is done (bot.cogs.upscale).
            """
            CREATE TABLE upscales (
                id INTEGER PRIMARY KEY,
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                source_job_id INTEGER,
                source_path TEXT NOT NULL,
                scale INTEGER NOT NULL,
                seed INTEGER NOT NULL,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                boxes TEXT NOT NULL,
                message_id INTEGER,
                application_id INTEGER,
                interaction_token TEXT,
                token_from REAL,
                final_job_id INTEGER,
                state TEXT NOT NULL DEFAULT 'tiles',
                created_at REAL NOT NULL
            )
            """,
            """
            CREATE TABLE upscale_tiles (
                upscale_id INTEGER NOT NULL REFERENCES upscales(id) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                job_id INTEGER NOT NULL UNIQUE,
                PRIMARY KEY (upscale_id, position)
            )
            """,
            "CREATE INDEX upscales_final ON upscales(final_job_id)",
        ],
    ),
    (
        "a saved style's LoRA tags",
        ["ALTER TABLE styles ADD COLUMN loras TEXT NOT NULL DEFAULT ''"],
    ),
    (
        "a server's default model and a saved style's model (catalogue names)",
        [
            "ALTER TABLE guild_settings ADD COLUMN model TEXT",
            "ALTER TABLE styles ADD COLUMN model TEXT",
        ],
    ),
    (
        "a job's structure (ControlNet kind and weight)",
        [
            "ALTER TABLE jobs ADD COLUMN structure TEXT",
            "ALTER TABLE jobs ADD COLUMN structure_weight REAL NOT NULL DEFAULT 1.0",
        ],
    ),
    (
        "live previews per server (/settings previews on|off)",
        ["ALTER TABLE guild_settings ADD COLUMN previews TEXT NOT NULL DEFAULT 'on'"],
    ),
    (
        "a saved style's structure kind",
        ["ALTER TABLE styles ADD COLUMN structure TEXT NOT NULL DEFAULT ''"],
    ),
    (
        "the structure kind a job's style asked for where its model has no such ControlNet",
        ["ALTER TABLE jobs ADD COLUMN structure_skipped TEXT"],
    ),
]
