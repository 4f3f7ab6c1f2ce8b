"""`mvrag`, the command line: `main` parses the subcommand and calls one library function. Each subcommand's flags
and runner live in the module named after what it works on: `release` (convert, export, verify-reference),
`generate`, `data`, `bench`, `retrieval` (index, retrieve), `evaluation` (eval), `train` (train, plan); `flags` holds what they
share."""

from mvrag_jax.cli.main import COMMANDS, command_help, main, parse
