"""RQ jobs: plain functions with primitive arguments, enqueued through app.core.queue (JOBS, enqueue)."""
