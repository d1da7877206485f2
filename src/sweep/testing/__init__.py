"""Test hooks that production code passes through but never chooses: the named fault
points (:mod:`sweep.testing.faults`, ``SWEEP_FAULT``) and the zero-cost trial runner
(:mod:`sweep.testing.zero_cost`, chosen by ``runner._target_``)."""
