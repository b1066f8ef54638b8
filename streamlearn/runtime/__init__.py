"""The job lifecycle (internal: the public surface is :mod:`streamlearn`).

- ``jobs``: create, pause, resume, status, list, delete (the job's spec and control);
- ``record``: the job's Redis record, the only module outside the state store that knows a job's keys;
- ``contract``: the data contract settled at job creation from a sample of the topic;
- ``worker`` / ``isolate``: a member of the job's consumer group, and fault isolation of its update steps;
- ``finalize``: state -> model -> snapshot, once for bounded jobs;
- ``predict``: a published model on a file (``streamlearn predict`` / ``evaluate``);
- ``local``: ``fit_local``, the same initialize / update / commit / finalize sequence in one process.
"""
