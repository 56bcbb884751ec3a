"""The exit codes of ``sing-audit`` (the README's table lists them)."""

EXIT_PASSED = 0
EXIT_POLICY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
