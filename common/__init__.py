"""What the gateway and the trainer share that is not the model contract: settings, transport-neutral errors,
the object-store client, the organ servers' clients and launcher, the model store's and datasets' formats.
Imports `services` only, never `gateway` or `trainer` (import-linter contracts in pyproject.toml)."""
