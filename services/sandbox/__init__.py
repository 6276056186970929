"""The sandbox service: runs untrusted code, one bubblewrap namespace set per run, holding no credentials."""
