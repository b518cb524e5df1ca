"""Login side: using a trained model -- predict and serve launchers, and reaching a node's server."""
