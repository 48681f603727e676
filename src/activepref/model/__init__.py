"""The ensemble reward model (ENN) and the process's floating-point mode."""
