"""Tuning with MetaSchedule: the databases a target's records live in (``databases``), the
tune loop with its budget, defaults and report (``tune``)."""
