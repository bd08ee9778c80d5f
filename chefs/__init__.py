"""The chef runtime and the chef kinds: pull inputs, run steps in task dirs, store outputs."""
