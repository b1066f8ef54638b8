"""A secured single-node KRaft broker for tests: a SASL_SSL listener (SCRAM-SHA-512 users made
at format time with ``--add-scram``), a certificate signed by a fresh test CA (made with
``cryptography``, PEM key/trust stores), and ``StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``; ``admin`` is the only super user on it."""
from __future__ import annotations

import datetime as dt
import ipaddress
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType,
                                   ResourceType)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamlearn.config import kafka_logging
from streamlearn.devstack.jars import ensure_kafka
from streamlearn.devstack.kafka import LOG4J2_PROPERTIES, _java_cmd, _kafka_properties, _new_cluster_id
from streamlearn.devstack.procs import free_ports, log_tail

ADMIN = "admin"


@dataclass
class SecureKafka:
    bootstrap: str
    ca: Path
    passwords: dict[str, str]
    proc: subprocess.Popen
    log: Path
    admins: list = field(default_factory=list)

    def conf(self, user: str, password: str | None = None, ca: str | None = None) -> dict[str, str]:
        """librdkafka properties of ``user`` (``password``/``ca``: override, e.g. wrong ones)."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user,
                "sasl.password": password if password is not None else self.passwords[user],
                "ssl.ca.location": ca if ca is not None else str(self.ca)}

    def env(self, user: str, password: str | None = None, ca: str | None = None) -> dict[str, str]:
        """``STREAMLEARN_KAFKA*`` variables that make a command ``user``."""
        env = {"STREAMLEARN_KAFKA": self.bootstrap}
        for key, value in self.conf(user, password, ca).items():
            env["STREAMLEARN_KAFKA_" + key.replace(".", "_").upper()] = value
        return env

    def admin(self) -> AdminClient:
        """The super user's admin client (kept: a dropped client cancels its requests)."""
        if not self.admins:
            self.admins.append(AdminClient(kafka_logging({"bootstrap.servers": self.bootstrap, **self.conf(ADMIN)})))
        return self.admins[0]

    def grant(self, kafka_acls_lines: list[str]) -> None:
        """Create the bindings of ``kafka-acls.sh --add`` command lines (as ``streamlearn acl``
        prints them) with the admin client."""
        bindings = {b: None for line in kafka_acls_lines for b in _binding(line)}  # distinct, in order
        for future in self.admin().create_acls(list(bindings)).values():
            future.result(30)


def _binding(line: str) -> list[AclBinding]:
    args = shlex.split(line)
    principal = args[args.index("--allow-principal") + 1]
    ops = [args[i + 1] for i, a in enumerate(args) if a == "--operation"]
    kind, name = ((ResourceType.TOPIC, args[args.index("--topic") + 1]) if "--topic" in args
                  else (ResourceType.GROUP, args[args.index("--group") + 1]))
    pattern = ResourcePatternType.PREFIXED if "prefixed" in args else ResourcePatternType.LITERAL
    return [AclBinding(kind, name, pattern, principal, "*", AclOperation[op.upper()], AclPermissionType.ALLOW)
            for op in ops]


def _certificates(d: Path) -> tuple[Path, Path]:
    """(ca.pem, server.pem holding the server's key and certificate chain)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamlearn test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem) + ca.public_bytes(pem))
    return d / "ca.pem", d / "server.pem"


def _properties(port: int, controller_port: int, d: Path, server_pem: Path, ca: Path, admin_password: str) -> str:
    """The local stack's broker properties, then the security ones (a later key wins)."""
    return _kafka_properties(port, controller_port, d / "data") + f"""\
# secured: SASL_SSL only, SCRAM users, ACLs (no ACL = no access), no auto-created topics
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
required username="{ADMIN}" password="{admin_password}";
ssl.keystore.type=PEM
ssl.keystore.location={server_pem}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN};User:ANONYMOUS
auto.create.topics.enable=false
"""


def start_secure_kafka(d: Path, passwords: dict[str, str], timeout: float = 180) -> SecureKafka:
    """Format and start the broker in ``d`` with SCRAM users ``passwords`` (``admin`` among them)."""
    libs = ensure_kafka()
    ca, server_pem = _certificates(d)
    port, controller_port = free_ports(2)
    config, log4j, log = d / "server.properties", d / "log4j2.properties", d / "kafka.log"
    config.write_text(_properties(port, controller_port, d, server_pem, ca, passwords[ADMIN]))
    log4j.write_text(LOG4J2_PROPERTIES)
    scram = [arg for user, pw in passwords.items()
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]")]
    fmt = subprocess.run(_java_cmd(libs, log4j, "kafka.tools.StorageTool", "format", "-t", _new_cluster_id(),
                                   "-c", str(config), *scram, heap=("-Xmx256m", "-XX:TieredStopAtLevel=1")),
                         capture_output=True, text=True, timeout=120)
    if fmt.returncode != 0:
        raise RuntimeError(f"kafka-storage format failed: {fmt.stdout}{fmt.stderr}")
    out = open(log, "w")
    proc = subprocess.Popen(_java_cmd(libs, log4j, "kafka.Kafka", str(config)), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d)
    kafka = SecureKafka(f"127.0.0.1:{port}", ca, passwords, proc, log)
    admin = kafka.admin()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_secure_kafka(kafka)
            raise RuntimeError(f"the secured broker did not start:\n{log_tail(log, 60)}")
        try:
            if admin.list_topics(timeout=2).brokers:
                return kafka
        except KafkaException:
            time.sleep(0.5)


def stop_secure_kafka(kafka: SecureKafka) -> None:
    kafka.proc.terminate()
    try:
        kafka.proc.wait(30)
    except subprocess.TimeoutExpired:
        kafka.proc.kill()
        kafka.proc.wait()
