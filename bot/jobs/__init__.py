"""Jobs: intake and life cycle (`service`), the dispatch loop (`dispatch`), the workers'
events (`events`), delivery to Discord (`delivery`), status messages (`status`) and the
worker backends (`backends`: the local worker lives in `pipeline.worker`, Valkey/Redis here)."""
