"""Worker backends the job service can drive (`pipeline.worker_backend.WorkerBackend`):
the local spawned worker is `pipeline.worker.WorkerClient`; `bot.jobs.backends.redis` reaches
any number of remote workers through Valkey/Redis streams."""
