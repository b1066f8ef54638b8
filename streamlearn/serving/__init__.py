"""Serving a job's model over HTTP: ``streamlearn serve JOB`` / ``conn.serve(job)`` and
``sl.Client(url)``. Needs the ``serve`` extra (Starlette, uvicorn, prometheus-client);
:mod:`streamlearn.serving.client` needs nothing beyond the package."""
