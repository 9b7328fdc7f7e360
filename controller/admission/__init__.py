"""The admission flow: the webhook app, sidecar injection, defaulting and the cross-object rules."""
