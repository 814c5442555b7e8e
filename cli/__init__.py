"""The `lightfmp` command line (installed as lightfmp.cli)."""
