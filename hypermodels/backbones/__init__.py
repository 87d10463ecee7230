"""The backbones a run can choose from, one module per kind.

``spec`` is what the project knows of any backbone; ``builtin`` the hand-described
table; ``applications`` describes ``keras:NAME`` from the model itself; ``own`` checks
and builds a backbone of one's own from a ``.keras`` file. `hypermodels.registry`
puts them together into one run's value, `Backbones`.
"""
