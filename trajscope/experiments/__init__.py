"""trajscope.experiments: sweeps of producer runs and their analysis (above ``producer`` and ``analysis``).

A sweep trains many runs (:mod:`trajscope.producer`) and tabulates what the analysis measures on each
(:mod:`trajscope.analysis`); it therefore lives above both, so that neither imports the other.
"""
