"""Optional signatures on bundles: authenticity on top of the manifest's integrity.

``MANIFEST.json`` lists the sha256 of every file of a bundle, so a damaged or partly altered bundle is
refused; but whoever can write the folder can rewrite a file *and* the manifest.  An Ed25519 signature over
the manifest (``MANIFEST.sig``), made at export with a private key the operator holds and checked at
detection with the matching public key, closes that: a detection host holds only the public key and
cannot make a bundle it would accept.  Keys are ordinary PEM files (``loglm keygen --out DIR`` writes a
pair; OpenSSL's ``genpkey -algorithm ed25519`` works too); the library is ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

SIGNATURE = "MANIFEST.sig"
MANIFEST = "MANIFEST.json"


def _fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair as ``signing_key.pem`` (keep it private) and ``verify_key.pem`` (give it to
    detection hosts).  Refuses to overwrite existing keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "signing_key.pem", out / "verify_key.pem"
    for p in (private, public):
        if p.exists():
            raise ValueError(f"{p} exists: keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _load(path: str | Path, private: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    data = Path(path).expanduser().read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a PEM {'private' if private else 'public'} key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise ValueError(f"{path}: an Ed25519 key is needed, got {type(key).__name__}")
    return key


def sign_folder(folder: Path, signing_key: str | Path) -> dict:
    """Write ``MANIFEST.sig``: the Ed25519 signature of the folder's ``MANIFEST.json`` bytes."""
    key = _load(signing_key, private=True)
    manifest = (folder / MANIFEST).read_bytes()
    sig = {"algorithm": "ed25519", "key": _fingerprint(key.public_key()),
           "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
           "signature": base64.b64encode(key.sign(manifest)).decode()}
    (folder / SIGNATURE).write_text(json.dumps(sig, indent=1))
    return sig


def verify_folder(folder: Path, verify_key: str | Path) -> dict:
    """Refuse the folder unless ``MANIFEST.sig`` is a valid signature of its ``MANIFEST.json`` by the key
    matching ``verify_key`` (run this before trusting the manifest's file list)."""
    from cryptography.exceptions import InvalidSignature

    key = _load(verify_key, private=False)
    path = folder / SIGNATURE
    if not path.is_file():
        raise ValueError(f"{folder}: unsigned ({SIGNATURE} missing) but a verify key is set; refusing it")
    try:
        sig = json.loads(path.read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: {SIGNATURE} is not readable ({e}); refusing it") from None
    if sig.get("key") != _fingerprint(key):
        raise ValueError(f"{folder}: signed by key {sig.get('key')}, not by the verify key {_fingerprint(key)}")
    try:
        key.verify(signature, (folder / MANIFEST).read_bytes())
    except InvalidSignature:
        raise ValueError(f"{folder}: the signature does not match MANIFEST.json (altered after signing?); "
                         "refusing it") from None
    return sig
