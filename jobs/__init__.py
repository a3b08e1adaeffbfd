"""RQ jobs: plain functions with primitive arguments, enqueued by dotted path (see app.core.queue: JOBS and enqueue)."""
