"""The Azure ML target: managed online endpoints (Azure ML v2), through ARM's REST API.

Not yet registered in `TARGETS`: args, rules, bodies and the roll's plan come first.
"""
