"""Durable jobs: the SQLite job store, the worker that claims jobs and the executor that runs them.

The web process only submits, reads and cancels through :class:`~service.jobs.store.JobStore`; it never
runs a job and never imports torch. Workers (``backbone-rank worker``) claim queued jobs, heartbeat
while they run them and write the result in the same transaction as the terminal state.
"""
