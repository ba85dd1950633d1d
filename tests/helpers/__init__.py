"""What tests share. Test modules import from here (and ``tests.golden``), never from each other.

- ``paths``: ``REPO_ROOT``, ``EXAMPLES``, the installed ``FLOWLEDGER`` command.
- ``servers``: ``Servers`` and ``StreamTarget``, the types of the session fixtures in ``tests/conftest.py``.
- ``databases``: a scratch database of a test's own (async, and a sync form for CliRunner tests).
- ``serving``: ``serve``/``serve_app``, the app under uvicorn on a free port; fails when it never gets ready.
- ``api``: HTTP client helpers: ``assert_problem``, ``wait_ended``, ``sse``.
- ``workflows``: workflow specs several tests build (``wf``, ``steps``).
- ``strategies``: the shared Hypothesis strategies (event bodies, envelopes, chains, random DAG runs).
- ``hash_chains``: runs chained as the store chains them, and the tamperings a forger would try.
- ``stored_runs``: legal runs of workflow ``orders`` written into a log; tampering with a stored row.
- ``engine_harness``: an in-process engine (store, queue, workflows, registry, worker) on a test's schema.
- ``engine_process``: real ``flowledger serve`` processes (kill -9, restart) for the crash tests.
- ``faulty_proxy``: a TCP proxy that drops and stalls connections on request (the chaos drill; a database going away).
- ``run_logs``: what those processes wrote: runs read back typed, worker pids, a whole stream's message ids.
- ``bad_nodes``: callables for ``python`` nodes that crash their worker (exit, segfault, memory, CPU); run only in worker processes, never imported by a test.
- ``relay``: writing events, waiting for a relay, reading a whole stream back.
- ``tenants``: API keys of a tenant in bulk, and a tenant's objects (a workflow, finished runs) for the auth tests.
"""
