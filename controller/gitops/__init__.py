"""The GitOps flow: git source → desired state → reconcile steps → converged cluster, under a leader."""
