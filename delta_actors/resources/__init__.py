"""The controller pattern: store informed objects, reconcile them, run informers."""
