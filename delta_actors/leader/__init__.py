"""Cluster-wide duties, run by the one elected leader."""
