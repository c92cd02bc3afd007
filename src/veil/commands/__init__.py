"""The `veil` commands, one module per command or group: the top floor of the package.

Each module holds a typer app or command (`veil.cli` assembles them) and may import any room,
since a command wires several together (`veil up` starts chain, nodes, relay and gateway);
no room imports a command. Module-level imports stay light (typer, rich, httpx): heavy
libraries load inside the commands, so `veil --help` is fast.

| module | commands |
|---|---|
| `node` | `veil node serve` |
| `relay` | `veil relay serve` |
| `chain` | `veil chain up / info / approve-release` |
| `verify` | `veil verify quote / descriptor / receipt` |
| `mpc` | `veil mpc party / chat` |
| `chat` | `veil chat`, `veil gateway` |
| `up` | `veil up` (and `LocalNetwork`, the network it runs) |
| `status` | `veil status` |
"""
