"""The existing-server endpoint over https: certificates are verified, and the CA is named in the stack
(issue 12, class 10: `trust_env=False` also dropped REQUESTS_CA_BUNDLE, and nothing else named a CA).

A real https server on 127.0.0.1 with a certificate signed by a CA made here (by the
`cryptography` package, or the `openssl` command where that is missing).
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pulumi
import pytest

from components.model_props import diff_props, validate
from components.model_registration import validate as registration_validate
from components.xinference_client import XinferenceClient, XinferenceTLSError, XinferenceUnreachable
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.stack_file import endpoint_ca_problems
from tests.stack_configs import namespaced

CA_FIX = "set xinference-offline:endpoint_ca_bundle to the PEM file of the CA that signed it"


# --- certificates and the server ------------------------------------------------------------


def _make_with_cryptography(out: Path, name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, key, signer, *, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                            critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                            critical=False)
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = build(ca_name, ca_name, ca_key, ca_key, ca=True)
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, leaf_key, ca_key, ca=False)
    (out / f"{name}-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}-server.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}-server.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _make_with_openssl(out: Path, name: str) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", f"/CN={name} test CA", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", f"{name}-server.key", "-out", f"{name}-server.csr")
    (out / f"{name}-ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                                         "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}-ext.cnf", "-out", f"{name}-server.pem")


def make_ca_and_server_cert(out: Path, name: str) -> Path:
    """``name``-ca.pem, ``name``-server.pem/.key (for IP 127.0.0.1); returns the CA file."""
    try:
        from cryptography import x509  # noqa: F401 - only whether it is there
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available to make a test CA")
        _make_with_openssl(out, name)
    else:
        _make_with_cryptography(out, name)
    return out / f"{name}-ca.pem"


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        body = json.dumps({"status": "ok", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A running https server on 127.0.0.1; its CA file, and a second CA that did not sign it."""
    out = tmp_path_factory.mktemp("tls")
    ca = make_ca_and_server_cert(out, "site")
    other_ca = make_ca_and_server_cert(out, "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(out / "site-server.pem", out / "site-server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"endpoint": f"https://127.0.0.1:{server.server_address[1]}", "port": server.server_address[1],
               "ca": str(ca), "other_ca": str(other_ca), "dir": out}
    finally:
        server.shutdown()
        server.server_close()


def client(endpoint: str, ca_bundle=None) -> XinferenceClient:
    return XinferenceClient(endpoint, connect_timeout=2, read_timeout=5, retry_window=30, ca_bundle=ca_bundle)


# --- the client ------------------------------------------------------------------------------------


def test_without_the_ca_verification_fails_at_once_and_says_which_setting_fixes_it(tls):
    started = time.monotonic()
    with pytest.raises(XinferenceTLSError) as info, client(tls["endpoint"]) as c:
        c.status()
    assert str(info.value) == (
        f"GET /status at {tls['endpoint']}: TLS verification failed against the public CAs: certificate verify "
        f"failed: unable to get local issuer certificate; nothing was sent. Fix: {CA_FIX}")
    assert time.monotonic() - started < 5  # not retried for the 30 s retry window: retrying cannot help


def test_with_the_ca_the_server_is_verified_and_answers(tls):
    with client(tls["endpoint"], tls["ca"]) as c:
        assert c.status() == {"status": "ok", "path": "/status"}


def test_requests_ca_bundle_in_the_environment_is_not_what_trusts_a_server(tls, monkeypatch):
    # The session ignores the environment (no proxies offline); the CA is named in the stack instead.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls["ca"])
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca"])
    with pytest.raises(XinferenceTLSError) as info, client(tls["endpoint"]) as c:
        c.status()
    assert str(info.value) == (
        f"GET /status at {tls['endpoint']}: TLS verification failed against the public CAs: certificate verify "
        f"failed: unable to get local issuer certificate; nothing was sent. Fix: {CA_FIX}")


def test_a_ca_that_did_not_sign_the_server_is_refused_naming_the_file(tls):
    with pytest.raises(XinferenceTLSError) as info, client(tls["endpoint"], tls["other_ca"]) as c:
        c.status()
    assert str(info.value) == (
        f"GET /status at {tls['endpoint']}: TLS verification failed against the CA in {tls['other_ca']} "
        "(xinference-offline:endpoint_ca_bundle): certificate verify failed: unable to get local issuer "
        f"certificate; nothing was sent. Fix: check that {tls['other_ca']} holds the CA that signed the "
        "server's certificate")


def test_the_right_ca_for_the_wrong_name_is_refused(tls):
    # The certificate is for the IP 127.0.0.1, not for the name `localhost`.
    endpoint = f"https://localhost:{tls['port']}"
    with pytest.raises(XinferenceTLSError) as info, client(endpoint, tls["ca"]) as c:
        c.status()
    assert str(info.value).startswith(f"GET /status at {endpoint}: TLS verification failed against the CA in "
                                      f"{tls['ca']} (xinference-offline:endpoint_ca_bundle): certificate verify "
                                      "failed: Hostname mismatch")


def test_plain_http_to_the_tls_port_is_not_mistaken_for_a_tls_failure(tls):
    endpoint = f"http://127.0.0.1:{tls['port']}"
    with pytest.raises(XinferenceUnreachable) as info, client(endpoint, tls["ca"]) as c:
        c.request("GET", "/status", deadline=time.monotonic() + 1)
    assert str(info.value).startswith(f"GET /status: Xinference at {endpoint} did not answer within the retry window")


# --- the stack setting -------------------------------------------------------------------------------


def existing(endpoint: str, **more) -> dict:
    return {"mode": "existing", "endpoint": endpoint,
            "models": [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "path": "/srv/models/emb"}], **more}


def ca_problems(cfg: dict) -> list[str]:
    return [str(p) for p in endpoint_ca_problems(load_stack_config(namespaced(cfg)))]


def test_the_setting_with_a_readable_ca_has_no_problem(tls):
    assert ca_problems(existing(tls["endpoint"], endpoint_ca_bundle=tls["ca"])) == []


def test_a_missing_ca_file_names_the_key(tmp_path):
    missing = str(tmp_path / "nowhere.pem")
    assert ca_problems(existing("https://10.0.0.5:9997", endpoint_ca_bundle=missing)) == [
        f"endpoint_ca_bundle = '{missing}': cannot read the CA file (No such file or directory); "
        "fix: copy the CA's PEM file to this path on this machine, or correct the path"]


def test_a_file_that_is_not_a_pem_certificate_names_the_key(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    assert ca_problems(existing("https://10.0.0.5:9997", endpoint_ca_bundle=str(junk))) == [
        f"endpoint_ca_bundle = '{junk}': is not a PEM CA certificate (NO_CERTIFICATE_OR_CRL_FOUND); "
        "fix: give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)"]


def test_a_directory_is_not_a_ca_file(tmp_path):
    assert ca_problems(existing("https://10.0.0.5:9997", endpoint_ca_bundle=str(tmp_path))) == [
        f"endpoint_ca_bundle = '{tmp_path}': cannot read the CA file (Is a directory); "
        "fix: copy the CA's PEM file to this path on this machine, or correct the path"]


def test_a_ca_for_a_plain_http_endpoint_is_a_mistake(tls):
    assert ca_problems(existing("http://10.0.0.5:9997", endpoint_ca_bundle=tls["ca"])) == [
        f"endpoint_ca_bundle = '{tls['ca']}': is set, but the endpoint http://10.0.0.5:9997 is not https; "
        "fix: set endpoint to the https:// URL of the server, or remove endpoint_ca_bundle"]


@pytest.mark.parametrize("written", ["ca.pem", "./certs/ca.pem", "/etc/ca\n.pem"])
def test_the_ca_path_must_be_absolute_and_printable(written):
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(existing("https://10.0.0.5:9997", endpoint_ca_bundle=written)))
    assert [str(p) for p in info.value.problems] == [
        f"endpoint_ca_bundle = {written!r}: must be the absolute path of a PEM file; "
        "fix: write e.g. /etc/xinference/ca.pem"]


def test_the_program_refuses_a_missing_ca_before_anything_runs(tmp_path):
    from tests.test_program import run_program

    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(pulumi.RunError) as info:
        run_program(existing("https://10.0.0.5:9997", endpoint_ca_bundle=missing))
    assert str(info.value) == (
        "stack config: 1 problem (keys under `xinference-offline:`):\n"
        f"  - endpoint_ca_bundle = '{missing}': cannot read the CA file (No such file or directory); "
        "fix: copy the CA's PEM file to this path on this machine, or correct the path")


# --- the provider's input ----------------------------------------------------------------------------


def props(**more) -> dict:
    return {"endpoint": "https://10.0.0.5:9997", "model_uid": "emb", "model_name": "bge-small-en-v1.5",
            "model_type": "embedding", **more}


def test_the_provider_input_must_be_an_absolute_path_for_an_https_endpoint():
    assert validate(props(endpoint_ca_bundle="ca.pem")) == [
        ("endpoint_ca_bundle", "endpoint_ca_bundle must be an absolute path, got 'ca.pem'")]
    assert validate(props(endpoint="http://10.0.0.5:9997", endpoint_ca_bundle="/etc/ca.pem")) == [
        ("endpoint_ca_bundle", "endpoint_ca_bundle is only used for an https:// endpoint, got 'http://10.0.0.5:9997'")]
    assert validate(props(endpoint_ca_bundle=7)) == [
        ("endpoint_ca_bundle", "endpoint_ca_bundle must be a string, got int")]


def test_a_custom_registration_refuses_the_same_connection_inputs_in_the_same_words():
    # The registration (models[].custom) talks to the same server: a relative CA, a bad ssh command
    # or endpoint must not get past it while the model beside it is refused.
    family = {"model_name": "site-minilm"}
    registration = {"endpoint": "https://10.0.0.5:9997", "model_type": "embedding", "model_name": "site-minilm",
                    "family": family}
    cases = [
        ({"endpoint_ca_bundle": "ca.pem"}, "endpoint_ca_bundle"),
        ({"endpoint": "http://10.0.0.5:9997", "endpoint_ca_bundle": "/etc/ca.pem"}, "endpoint_ca_bundle"),
        ({"docker_ssh": "ssh admin@gpu-1"}, "docker_ssh"),
        ({"endpoint": "10.0.0.5:9997"}, "endpoint"),
        ({"docker_host": 7}, "docker_host"),
        ({"model_type": "embeddings"}, "model_type")]
    for change, key in cases:
        model_problems = [p for p in validate(props(**change)) if p[0] == key]
        assert model_problems, change
        assert [p for p in registration_validate({**registration, **change}) if p[0] == key] == model_problems
    assert registration_validate(registration) == []
    assert registration_validate({**registration, "model_name": "  "}) == [
        ("model_name", "model_name is required"),
        ("family", "family.model_name 'site-minilm' differs from model_name '  '")]


def test_naming_or_moving_the_ca_changes_in_place_and_never_relaunches():
    assert diff_props(props(), props(endpoint_ca_bundle="/etc/ca.pem")) == ([], ["endpoint_ca_bundle"])
    assert diff_props(props(endpoint_ca_bundle="/etc/ca.pem"), props(endpoint_ca_bundle="/etc/new.pem")) == \
        ([], ["endpoint_ca_bundle"])
    assert diff_props(props(), props()) == ([], [])  # a state written before the input existed: no change
