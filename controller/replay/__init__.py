"""The replay data plane: generator (load + comparison), responder (mocks), reports."""
