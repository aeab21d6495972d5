"""synthset's orchestration: job spec, prompt shards, Ray executor, writers, progress."""
