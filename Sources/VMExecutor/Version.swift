/// vmexec's own version: the CLI's `--version`, the daemon's `GET /v1/version`.
public let vmexecVersion = "0.5.0"
