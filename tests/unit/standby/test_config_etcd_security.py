"""``[standby.lease]``'s etcd TLS and authentication keys: checked when the config loads,
each problem naming the file, the key and the fix; the store built from a good config
carries the TLS context and the credentials (never showing the password)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config
from lab.pki import EtcdPki, make_etcd_pki

BASE = '''[node]
name = "edge-a"

[standby]
key_file = "k"
peer = "10.0.0.2:7470"

[standby.lease]
backend = "etcd"
'''

HTTPS = 'etcd_endpoints = ["https://10.0.1.5:2379", "https://10.0.2.5:2379"]\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdPki:
    return make_etcd_pki(tmp_path_factory.mktemp("pki"))


def password_file(tmp_path: Path, text: str = "pa ss\n", mode: int = 0o600) -> Path:
    path = tmp_path / "etcd-password"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def secure(pki: EtcdPki, password: Path, **override: str | None) -> str:
    keys = {"etcd_ca": str(pki.ca), "etcd_cert": str(pki.client_cert), "etcd_key": str(pki.client_key),
            "etcd_user": "lifeline", "etcd_password_file": str(password)}
    keys.update(override)
    return "".join(f'{k} = "{v}"\n' for k, v in keys.items() if v is not None)


def problems(tmp_path: Path, lease: str) -> list[str]:
    path = tmp_path / "lifeline.toml"
    path.write_text(BASE + lease)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for problem in info.value.problems:
        assert problem.startswith(f"{path}: "), problem
    return info.value.problems


def only(tmp_path: Path, lease: str, key: str, *fragments: str) -> str:
    found = problems(tmp_path, lease)
    assert len(found) == 1, found
    assert f": standby.lease.{key}: " in found[0], (key, found[0])
    for fragment in fragments:
        assert fragment in found[0], (fragment, found[0])
    return found[0]


def test_a_secure_etcd_lease_loads_and_opens_a_store_with_tls_and_credentials(tmp_path: Path, pki: EtcdPki) -> None:
    from daemon.standby.stores import open_lease_store

    path = tmp_path / "lifeline.toml"
    path.write_text(BASE + HTTPS + secure(pki, password_file(tmp_path)))
    config = load_config(path)
    assert config.standby is not None and config.standby.lease is not None
    lease = config.standby.lease
    assert (lease.etcd_ca, lease.etcd_user) == (pki.ca, "lifeline")
    store = open_lease_store(lease, "edge-a", b"k" * 32)
    assert store._credentials is not None  # type: ignore[attr-defined]
    assert (store._credentials.user, store._credentials.password) == ("lifeline", "pa ss")  # type: ignore[attr-defined]
    assert "pa ss" not in repr(store._credentials)  # type: ignore[attr-defined]
    context = store._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_files_need_https_endpoints(tmp_path: Path, pki: EtcdPki) -> None:
    lease = 'etcd_endpoints = ["https://10.0.1.5:2379", "http://10.0.2.5:2379"]\n'
    only(tmp_path, lease + secure(pki, password_file(tmp_path), etcd_user=None, etcd_password_file=None),
         "etcd_endpoints", "TLS files are given", "must be https://", "http://10.0.2.5:2379")


def test_a_user_needs_https_endpoints(tmp_path: Path, pki: EtcdPki) -> None:
    lease = 'etcd_endpoints = ["http://10.0.1.5:2379"]\n'
    only(tmp_path, lease + secure(pki, password_file(tmp_path), etcd_ca=None, etcd_cert=None, etcd_key=None),
         "etcd_endpoints", "etcd_user is set", "in clear", "must be https://")


def test_a_certificate_without_its_key_and_a_key_without_its_certificate(tmp_path: Path, pki: EtcdPki) -> None:
    password = password_file(tmp_path)
    only(tmp_path, HTTPS + secure(pki, password, etcd_key=None), "etcd_key", "give its private key too")
    only(tmp_path, HTTPS + secure(pki, password, etcd_cert=None), "etcd_cert", "give its certificate too")


def test_a_user_without_a_password_file_and_the_reverse(tmp_path: Path, pki: EtcdPki) -> None:
    password = password_file(tmp_path)
    only(tmp_path, HTTPS + secure(pki, password, etcd_password_file=None), "etcd_password_file",
         "etcd_user is set", "mode 0600")
    only(tmp_path, HTTPS + secure(pki, password, etcd_user=None), "etcd_user", "give the etcd user name")


@pytest.mark.parametrize("key", ["etcd_ca", "etcd_cert", "etcd_key", "etcd_password_file"])
def test_a_missing_file_is_named(tmp_path: Path, pki: EtcdPki, key: str) -> None:
    missing = tmp_path / "nowhere" / "x.pem"
    only(tmp_path, HTTPS + secure(pki, password_file(tmp_path), **{key: str(missing)}), key,
         f"{missing}: no such file")


def test_a_relative_path_is_resolved_against_the_config(tmp_path: Path, pki: EtcdPki) -> None:
    password_file(tmp_path)
    problem = only(tmp_path, HTTPS + secure(pki, Path("etcd-password"), etcd_ca="ca-elsewhere.pem"), "etcd_ca")
    assert f"{tmp_path / 'ca-elsewhere.pem'}: no such file" in problem


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_password_file_others_can_read_is_refused(tmp_path: Path, pki: EtcdPki, mode: int) -> None:
    password = password_file(tmp_path, mode=mode)
    problem = only(tmp_path, HTTPS + secure(pki, password), "etcd_password_file",
                   f"mode {mode:04o} lets group or others", f"chmod 600 {password}")
    assert "pa ss" not in problem


def test_a_client_key_others_can_read_is_refused(tmp_path: Path, pki: EtcdPki) -> None:
    key = tmp_path / "client-key.pem"
    key.write_bytes(pki.client_key.read_bytes())
    os.chmod(key, 0o644)
    only(tmp_path, HTTPS + secure(pki, password_file(tmp_path), etcd_key=str(key)), "etcd_key",
         "mode 0644", f"chmod 600 {key}")


@pytest.mark.parametrize("text, fragment", [("\n", "empty"), ("", "empty"), ("one\ntwo\n", "more than one line"),
                                            ("x" * 5000, "more than 4096 bytes")])
def test_a_password_file_that_is_not_one_password_is_refused(tmp_path: Path, pki: EtcdPki, text: str,
                                                             fragment: str) -> None:
    only(tmp_path, HTTPS + secure(pki, password_file(tmp_path, text)), "etcd_password_file", fragment)


def test_files_that_are_not_pem_or_do_not_match(tmp_path: Path, pki: EtcdPki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    password = password_file(tmp_path)
    only(tmp_path, HTTPS + secure(pki, password, etcd_ca=str(junk)), "etcd_ca", "cannot load the CA bundle")
    # The rogue client's key does not match the lab client's certificate.
    problem = only(tmp_path, HTTPS + secure(pki, password, etcd_key=str(pki.rogue_client_key)), "etcd_cert",
                   "cannot load the client certificate and its key", "the key matching the certificate")
    assert "PRIVATE KEY" not in problem  # never the file's content


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(tmp_path: Path, pki: EtcdPki) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    os.chmod(encrypted, 0o600)
    only(tmp_path, HTTPS + secure(pki, password_file(tmp_path), etcd_key=str(encrypted)), "etcd_cert",
         "encrypted with a passphrase", "unencrypted")


def test_a_user_name_with_spaces_is_refused(tmp_path: Path, pki: EtcdPki) -> None:
    only(tmp_path, HTTPS + secure(pki, password_file(tmp_path), etcd_user="life line"), "etcd_user",
         "without spaces")
