"""Drop-in reward functions for TRL, veRL and OpenRLHF backed by the rewardhub reward API."""
