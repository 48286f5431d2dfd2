"""Progressive delivery, written once over a small traffic interface (issue 20).

`spec` holds what a program declares (a canary, a held traffic split, a mirror share) and the
rules that refuse bad ones, naming the field; `engine` runs a canary over any target that
implements `engine.TrafficControl`; `words` says in the preview what will happen.
"""
