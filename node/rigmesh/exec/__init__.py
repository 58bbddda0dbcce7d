"""Provider-side execution shell: job runner, GPU probe, telemetry and its evidence checker."""
