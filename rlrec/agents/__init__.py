"""Agents: the tabular reference, DQN, and baselines, all following :class:`rlrec.agents.base.Agent`."""
