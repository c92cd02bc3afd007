"""`veil verify`: exit codes and the step-by-step report for quotes, descriptors and receipts."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from support.attestation import MODEL_HASH, OUTDATED_NOW, TDX_NOW, TESTDATA, dev_descriptor
from veil.cli import app
from veil.identity import NodeIdentity, request_digest, sign_receipt
from veil.node.keys import NodeKeys

runner = CliRunner()
NODE = NodeIdentity.generate()


def veil(*args: str | Path):
    return runner.invoke(app, ["verify", *map(str, args)], terminal_width=200)


def test_quote_up_to_date() -> None:
    result = veil(
        "quote", TESTDATA / "tdx_quote", "--collateral", TESTDATA / "tdx_quote_collateral.json",
        "--now", TDX_NOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "UpToDate" in result.output and "VERIFIED" in result.output
    assert "MRTD" in result.output and "hardware (tdx)" in result.output


def test_quote_refusals_exit_1() -> None:
    outdated = veil(
        "quote", TESTDATA / "tdx_quote_outdated",
        "--collateral", TESTDATA / "tdx_quote_outdated_collateral.json", "--now", OUTDATED_NOW,
    )  # fmt: skip
    assert outdated.exit_code == 1 and "REFUSED (tcb_status)" in outdated.output
    sgx = veil(
        "quote", TESTDATA / "sgx_quote", "--collateral", TESTDATA / "sgx_quote_collateral.json",
        "--now", TDX_NOW,
    )  # fmt: skip
    assert sgx.exit_code == 1 and "tee_type" in sgx.output
    hex_quote = veil("quote", TESTDATA / "quote-from-tappd.hex", "--now", TDX_NOW)
    assert hex_quote.exit_code == 1 and "no collateral" in hex_quote.output
    assert "quote v4" in hex_quote.output  # the hex text was read as a quote


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    assert veil("quote", tmp_path / "absent").exit_code == 2
    assert veil("descriptor", tmp_path / "absent").exit_code == 2
    bad = veil("quote", TESTDATA / "tdx_quote", "--allow-status", "Fine")
    assert bad.exit_code == 2


def test_descriptor_dev_node(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(dev_descriptor(NODE, NodeKeys.generate(), now=TDX_NOW).encode())
    ok = veil("descriptor", path, "--mode", "anonymous", "--now", TDX_NOW + 1)
    assert ok.exit_code == 0, ok.output
    assert "VERIFIED (no hardware isolation)" in ok.output
    releases = tmp_path / "releases.json"
    releases.write_text("[]")
    tee = veil("descriptor", path, "--mode", "tee", "--releases", releases, "--now", TDX_NOW + 1)
    assert tee.exit_code == 1 and "REFUSED (evidence_kind)" in tee.output
    assert veil("descriptor", path, "--mode", "tee").exit_code == 2  # tee without releases
    late = veil("descriptor", path, "--now", TDX_NOW + 10**6)
    assert late.exit_code == 1 and "validity" in late.output


def test_receipt(tmp_path: Path) -> None:
    sent, answer = b"sealed", "the answer"
    receipt = sign_receipt(NODE, request_digest(sent), answer, MODEL_HASH, 3, 2)
    path, answer_file = tmp_path / "receipt.json", tmp_path / "answer.txt"
    path.write_text(json.dumps({"id": "chatcmpl-1", "veil_receipt": receipt.to_json()}))
    answer_file.write_text(answer)
    digest = request_digest(sent).hex()
    ok = veil(
        "receipt", path, "--signer", NODE.address, "--request-digest", digest,
        "--answer-file", answer_file, "--model-hash", MODEL_HASH.hex(),
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    only_sig = veil("receipt", path, "--signer", NODE.address)
    assert only_sig.exit_code == 0 and "not given" in only_sig.output
    other = veil("receipt", path, "--signer", NodeIdentity.generate().address)
    assert other.exit_code == 1 and "REFUSED (signer)" in other.output
    answer_file.write_text(answer + "!")
    changed = veil("receipt", path, "--signer", NODE.address, "--answer-file", answer_file)
    assert changed.exit_code == 1 and "REFUSED (answer_digest)" in changed.output
    path.write_text("{not json")
    assert veil("receipt", path, "--signer", NODE.address).exit_code == 1
    assert veil("receipt", path, "--signer", NODE.address, "--model-hash", "zz").exit_code == 2
