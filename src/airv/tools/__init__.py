"""Commands that read a run directory: eval, report, plan, vote."""
