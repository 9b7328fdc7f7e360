"""The capture data plane: the mitmproxy sidecar, RRPair records, DLP, filters and the forwarder."""
