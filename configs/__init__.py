"""Ready run configs and sweep specs, shipped inside the package as ``trajscope.configs``.

``quickstart.yaml``, ``paper/*.yaml`` (the paper's experiments) and ``sweeps/*.yaml``;
:func:`trajscope.resources.configs_dir` finds this folder in a source checkout and in an installed wheel.
"""
