"""The inspector web UI: the cluster as replayops sees it; its actions become git commits."""
