"""The command line on top of the flow: parser (options), inputs (what they name, checked before any work),
commands (image suites and datasets), ct (CT suites), output (plan, run log, reports) and main (errors as one line)."""
