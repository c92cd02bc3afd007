"""`veil verify ...`: check a node descriptor, a TDX quote or a receipt, step by step.

Every command prints each step with its outcome and exits 0 only if all passed: 1 when the
thing was refused, 2 when the input could not be read. Imports stay light until a command runs
(no dcap_qvl, eth_account or web3 at `veil --help`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from veil.attest.policy import VerificationReport
    from veil.attest.report import AttestationReport, Step

verify_app = typer.Typer(
    help="Verify node descriptors, attestation evidence and receipts.", no_args_is_help=True
)

_STYLE = {"passed": "green", "warning": "yellow", "failed": "bold red", "skipped": "dim"}


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _steps_table(title: str, steps: list[Step], prefix: str = "") -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("step")
    table.add_column("outcome")
    table.add_column("detail", overflow="fold")
    for step in steps:
        style = _STYLE.get(step.status.value, "")
        table.add_row(prefix + step.name, f"[{style}]{step.status.value}[/]", step.detail)
    return table


def _attestation_lines(console: Console, report: AttestationReport) -> None:
    isolation = report.isolation
    style = "green" if report.hardware_isolated else "bold yellow"
    console.print(f"isolation: [{style}]{isolation}[/]")
    if report.tcb_status:
        advisories = ", ".join(report.advisories) or "none"
        console.print(f"TCB status: {report.tcb_status} (advisories: {advisories})")
    for name, value in report.measurements.items():
        console.print(f"{name}: {value}")
    if report.measurement is not None:
        console.print(f"release measurement: {report.measurement.hex()}")
    if report.report_data is not None:
        console.print(f"report data: {report.report_data.hex()}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        typer.echo(f"error: cannot read {path}: {err.strerror}", err=True)
        raise typer.Exit(2) from None


def _verdict(console: Console, ok: bool, failure: str = "", *, note: str = "") -> None:
    if ok:
        console.print("[bold green]VERIFIED[/]" + (f" [bold yellow]({note})[/]" if note else ""))
        return
    console.print(f"[bold red]REFUSED[/] {failure}")
    raise typer.Exit(1)


def _quote_bytes(raw: bytes) -> bytes:
    """A binary quote, or hex text (as some quote tools print it)."""
    text = raw.strip()
    try:
        if text and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text.decode("ascii"))
    except ValueError:
        pass
    return raw


@verify_app.command("quote")
def quote(
    file: Path = typer.Argument(..., help="TDX quote (binary or hex) or Veil tdx evidence."),
    collateral: Path | None = typer.Option(
        None, "--collateral", help="Collateral JSON (dcap-qvl QuoteCollateralV3)."
    ),
    pccs_url: str | None = typer.Option(
        None, "--pccs-url", help="Fetch collateral from this PCCS instead (network)."
    ),
    now: int | None = typer.Option(None, "--now", help="Verification time, UNIX s (default now)."),
    allow_status: list[str] = typer.Option(
        ["UpToDate"], "--allow-status", help="TCB status to accept (repeatable)."
    ),
) -> None:
    """Verify an Intel TDX quote against Intel collateral at a given time."""
    from veil.attest.errors import AttestError
    from veil.attest.tdx import CollateralFile, PccsCollateral, TdxVerifier

    data = _quote_bytes(_read(file))
    source = (
        CollateralFile(collateral)
        if collateral is not None
        else PccsCollateral(pccs_url)
        if pccs_url
        else None
    )
    try:
        verifier = TdxVerifier(tcb_statuses=allow_status, collateral=source)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    at = int(time.time()) if now is None else now
    console = _console()
    try:
        report = verifier.verify(data, now=at)
    except AttestError as err:
        if err.report is not None:
            console.print(_steps_table(f"TDX quote {file} at {at}", err.report.steps))
        _verdict(console, False, f"({err.check}): {err}")
        return
    console.print(_steps_table(f"TDX quote {file} at {at}", report.steps))
    _attestation_lines(console, report)
    _verdict(console, True)


@verify_app.command("descriptor")
def descriptor(
    file: Path = typer.Argument(..., help="Signed node descriptor (JSON)."),
    mode: str = typer.Option("anonymous", "--mode", help="Privacy mode: anonymous, tee, mpc."),
    releases: Path | None = typer.Option(
        None, "--releases", help="Approved releases JSON file (required for tee)."
    ),
    model: str | None = typer.Option(None, "--model", help="Model id that must be approved."),
    collateral: Path | None = typer.Option(
        None, "--collateral", help="TDX collateral JSON (default: the evidence's own)."
    ),
    pccs_url: str | None = typer.Option(None, "--pccs-url", help="Fetch TDX collateral here."),
    now: int | None = typer.Option(None, "--now", help="Verification time, UNIX s (default now)."),
) -> None:
    """Verify a node descriptor under a privacy mode's policy, as a client would."""
    from veil.attest.errors import NodeRejected, PolicyConfigError
    from veil.attest.policy import LocalReleases, Policy
    from veil.attest.report import NO_HARDWARE_ISOLATION
    from veil.attest.tdx import CollateralFile, PccsCollateral

    data = _read(file)
    try:
        policy = Policy.for_mode(
            mode,
            releases=None if releases is None else LocalReleases.from_file(releases),
            collateral=(
                CollateralFile(collateral)
                if collateral is not None
                else PccsCollateral(pccs_url)
                if pccs_url
                else None
            ),
        )
    except (PolicyConfigError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from veil.attest.policy import verify_node

    at = int(time.time()) if now is None else now
    console = _console()
    try:
        report = verify_node(data, policy, at, model_id=model)
        failure = ""
    except NodeRejected as err:
        if err.report is None:
            raise
        report, failure = cast("VerificationReport", err.report), f"({err.check}): {err}"
    title = f"node descriptor {file}, {policy.mode} policy, at {at}"
    if report.address:
        title += f"\nnode {report.address}"
    console.print(_steps_table(title, report.steps))
    if report.attestation is not None:
        console.print(
            _steps_table(f"{report.attestation.kind} evidence", report.attestation.steps, "  ")
        )
        _attestation_lines(console, report.attestation)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if report.verified:
        console.print("approved models: " + ", ".join(m.model_id for m in report.approved_models))
    note = "" if report.hardware_isolated else NO_HARDWARE_ISOLATION
    _verdict(console, report.verified, failure, note=note)


@verify_app.command("receipt")
def receipt(
    file: Path = typer.Argument(..., help="Receipt JSON, or an answer with a veil_receipt field."),
    signer: str = typer.Option(..., "--signer", help="The node address that must have signed."),
    request_digest: str | None = typer.Option(
        None, "--request-digest", help="sha256 of the encapsulated request (hex)."
    ),
    answer_file: Path | None = typer.Option(
        None, "--answer-file", help="File holding the exact answer text (UTF-8)."
    ),
    model_hash: str | None = typer.Option(None, "--model-hash", help="Weights sha256 (hex)."),
) -> None:
    """Verify a receipt's signature and, where given, its request, answer and model."""
    from veil.attest.report import Step, StepStatus
    from veil.identity.errors import ReceiptError
    from veil.identity.receipt import RECEIPT_CHECKS, Receipt, check_receipt

    raw = _read(file)
    answer = None
    if answer_file is not None:
        try:
            answer = _read(answer_file).decode("utf-8")
        except UnicodeDecodeError:
            typer.echo("error: the answer file is not UTF-8", err=True)
            raise typer.Exit(2) from None
    digest = _hex32_option(request_digest, "--request-digest")
    model = _hex32_option(model_hash, "--model-hash")
    console = _console()
    title = f"receipt {file}"
    try:
        obj = json.loads(raw)
        if isinstance(obj, dict) and "veil_receipt" in obj:
            obj = obj["veil_receipt"]
        parsed = Receipt.from_json(obj)
    except (ValueError, ReceiptError) as err:
        reason = str(err) if isinstance(err, ReceiptError) else "not JSON"
        console.print(_steps_table(title, [Step("parse", StepStatus.FAILED, reason)]))
        _verdict(console, False, f"(parse): {reason}")
        return
    error: ReceiptError | None = None
    try:
        check_receipt(parsed, signer, request_digest=digest, answer_text=answer, model_hash=model)
    except ReceiptError as err:
        error = err
    given = {"request_digest": digest, "answer_digest": answer, "model_hash": model}
    failed_at = RECEIPT_CHECKS.index(error.check) if error is not None else len(RECEIPT_CHECKS)
    steps = [Step("parse", StepStatus.PASSED)]
    for i, name in enumerate(RECEIPT_CHECKS):
        if name in given and given[name] is None:
            steps.append(Step(name, StepStatus.SKIPPED, "not given"))
        elif i < failed_at:
            steps.append(Step(name, StepStatus.PASSED))
        elif i == failed_at:
            steps.append(Step(name, StepStatus.FAILED, str(error)))
        else:
            steps.append(Step(name, StepStatus.SKIPPED, "an earlier step failed"))
    console.print(_steps_table(title, steps))
    _verdict(console, error is None, f"({error.check}): {error}" if error else "")


def _hex32_option(value: str | None, option: str) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        typer.echo(f"error: {option} must be 32 bytes of hex", err=True)
        raise typer.Exit(2)
    return raw
