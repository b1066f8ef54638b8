"""What a person looks at (internal: the commands are the surface).

- ``progress``: a progress line on a terminal for ``produce`` and ``worker`` (records, rate, ETA);
- ``watch``: ``streamlearn job watch``, a live view of a job in the terminal;
- ``plots`` / ``report``: ``streamlearn report``, one self-contained HTML page with the job's pictures.
"""
