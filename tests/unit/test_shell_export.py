"""``eval "$(streamlearn stack up)"`` exports the settings to child processes."""
from __future__ import annotations

import subprocess

from streamlearn.config import Settings


def test_export_lines_reach_a_child_process_through_eval():
    s = Settings(kafka="127.0.0.1:9092", redis="redis://u:p%20w@127.0.0.1:6379/0",
                 kafka_conf={"security.protocol": "SASL_SSL"})
    script = "\n".join(s.shell_lines(reveal=True, export=True))
    out = subprocess.run(["bash", "-c", 'eval "$(cat)"; python3 -c "import os; '
                                       'print(os.environ[\'STREAMLEARN_REDIS\'], os.environ[\'STREAMLEARN_KAFKA_SECURITY_PROTOCOL\'])"'],
                         input=script, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["redis://u:p%20w@127.0.0.1:6379/0", "SASL_SSL"]
    assert all(line.startswith("export ") for line in s.shell_lines(export=True))
    assert not any(line.startswith("export ") for line in s.shell_lines())
