"""The node's keystore file: its secp256k1 account, encrypted with a passphrase or kept 0600.

Two formats, both JSON:

* encrypted: eth_account's keystore (Web3 Secret Storage v3, scrypt or pbkdf2, as geth writes);
* plain: `{"veil_keystore": 1, "address": ..., "private_key": ...}`, for machines whose disk
  encryption or secret manager already protects it.

Either is written 0600 (directory 0700) through a temporary file and a rename, and refused on
load when group or others may read it, when another user owns it, or when it is a symlink:
a key others could read is not the node's alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from veil.identity.errors import KeystoreLocked, KeystorePermissions, KeystoreUnreadable

__all__ = ["DEFAULT_SCRYPT_N", "MAX_KEYSTORE_BYTES", "load_keystore", "save_keystore"]

log = logging.getLogger(__name__)

DEFAULT_SCRYPT_N = 2**18  # geth's "standard" scrypt cost: about 1 s and 256 MiB per unlock
MAX_KEYSTORE_BYTES = 64 * 1024
_PLAIN_TAG = "veil_keystore"


def save_keystore(
    account: LocalAccount,
    path: Path,
    passphrase: str | None = None,
    *,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> None:
    """Write `account` to `path` (0600), encrypted when a passphrase is given."""
    if passphrase is not None:
        if not passphrase:
            raise ValueError("an empty passphrase protects nothing; pass None for a plain file")
        content: dict[str, Any] = Account.encrypt(
            account.key, passphrase, kdf="scrypt", iterations=scrypt_n
        )
    else:
        content = {
            _PLAIN_TAG: 1,
            "address": account.address,
            "private_key": "0x" + bytes(account.key).hex(),
        }
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(content, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeystoreUnreadable(f"no keystore at {path}", check="keystore.exists") from None
    except OSError as err:
        # ELOOP: a symlink, refused so nobody can point the node at another file
        raise KeystoreUnreadable(f"cannot open keystore {path}: {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise KeystoreUnreadable(f"keystore {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_uid != os.getuid():
            raise KeystorePermissions(f"keystore {path} belongs to another user")
        if info.st_mode & 0o077:
            raise KeystorePermissions(
                f"keystore {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"group and others must not have access (chmod 600)"
            )
        data = f.read(MAX_KEYSTORE_BYTES + 1)
    if len(data) > MAX_KEYSTORE_BYTES:
        raise KeystoreUnreadable(f"keystore {path} is too large to be one")
    return data


def load_keystore(path: Path, passphrase: str | None = None) -> LocalAccount:
    """The account in `path`; typed errors for a missing, exposed, locked or broken keystore."""
    path = Path(path)
    data = _read_private(path)
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeystoreUnreadable(f"keystore {path} is not JSON") from None
    if not isinstance(content, dict):
        raise KeystoreUnreadable(f"keystore {path} is not a keystore object")
    if "crypto" in content or "Crypto" in content:
        if passphrase is None:
            raise KeystoreLocked(f"keystore {path} is encrypted: a passphrase is needed")
        try:
            key = Account.decrypt(content, passphrase)
        except ValueError as err:  # eth_keyfile's errors are ValueErrors
            if "MAC mismatch" in str(err):
                raise KeystoreLocked(f"wrong passphrase for keystore {path}") from None
            raise KeystoreUnreadable(f"keystore {path} cannot be decrypted: {err}") from None
        except (KeyError, TypeError):
            raise KeystoreUnreadable(f"keystore {path} is missing encryption fields") from None
        account: LocalAccount = Account.from_key(key)
        expected = content.get("address")
    elif content.get(_PLAIN_TAG) == 1:
        if passphrase is not None:
            log.warning("keystore %s is not encrypted; the passphrase given is not used", path)
        try:
            account = Account.from_key(content["private_key"])
        except (KeyError, ValueError, TypeError):
            raise KeystoreUnreadable(f"keystore {path} has no valid private key") from None
        expected = content.get("address")
    else:
        raise KeystoreUnreadable(f"{path} is not a keystore this version reads")
    if isinstance(expected, str) and expected.lower().removeprefix("0x") != (
        account.address.lower().removeprefix("0x")
    ):
        raise KeystoreUnreadable(f"keystore {path}: the key does not match the address in it")
    return account
